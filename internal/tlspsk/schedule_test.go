package tlspsk

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func same(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if w := unhex(t, want); !bytes.Equal(got, w) {
		t.Errorf("%s = %x, want %x (RFC 8448)", what, got, w)
	}
}

// The key schedule against RFC 8448's traces: section 3 (a full handshake,
// no PSK: the Early Secret from zeros) and section 4 (a PSK handshake: its
// binder; the trace's PSK is a resumption one, so "res binder").
func TestScheduleRFC8448(t *testing.T) {
	s := suiteByID(TLS_AES_128_GCM_SHA256)
	t.Run("section3", func(t *testing.T) {
		k := newSchedule(s, nil)
		same(t, "early secret", k.early, "33 ad 0a 1c 60 7e c0 3b 09 e6 cd 98 93 68 0c e2 10 ad f3 00 aa 1f 26 60 e1 b2 2e 10 f1 70 f9 2a")
		k.setECDHE(unhex(t, "8b d4 05 4f b5 5b 9d 63 fd fb ac f9 f0 4b 9f 0d 35 e6 d6 3f 53 75 63 ef d4 62 72 90 0f 89 49 2d"))
		c, sv := k.handshakeSecrets(unhex(t, "86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8"))
		same(t, "client_handshake_traffic_secret", c, "b3 ed db 12 6e 06 7f 35 a7 80 b3 ab f4 5e 2d 8f 3b 1a 95 07 38 f5 2e 96 00 74 6a 0e 27 a5 5a 21")
		same(t, "server_handshake_traffic_secret", sv, "b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38")
		key, iv := s.trafficKeys(sv)
		same(t, "server handshake key", key, "3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")
		same(t, "server handshake iv", iv, "5d 31 3e b2 67 12 76 ee 13 00 0b 30")
		thSF := unhex(t, "96 08 10 2a 0f 1c cc 6d b6 25 0b 7b 7e 41 7b 1a 00 0e aa da 3d aa e4 77 7a 76 86 c9 ff 83 df 13")
		ca, sa := k.applicationSecrets(thSF)
		same(t, "client_application_traffic_secret_0", ca, "9e 40 64 6c e7 9a 7f 9d c0 5a f8 88 9b ce 65 52 87 5a fa 0b 06 df 00 87 f7 92 eb b7 c1 75 04 a5")
		same(t, "server_application_traffic_secret_0", sa, "a1 1a f9 f0 55 31 f8 56 ad 47 11 6b 45 a9 50 32 82 04 b4 f4 4b fb 6b 3a 4b 4f 1f 3f cb 63 16 43")
		same(t, "client Finished", s.finishedMAC(c, thSF), "a8 ec 43 6d 67 76 34 ae 52 5a c1 fc eb e1 1a 03 9e c1 76 94 fa c6 e9 85 27 b6 42 f2 ed d5 ce 61")
	})
	t.Run("section4-binder", func(t *testing.T) {
		k := newSchedule(s, unhex(t, "4e cd 0e b6 ec 3b 4d 87 f5 d6 02 8f 92 2c a4 c5 85 1a 27 7f d4 13 11 c9 e6 2d 2c 94 92 e1 c4 f3"))
		same(t, "early secret", k.early, "9b 21 88 e9 b2 fc 6d 64 d7 1d c3 29 90 0e 20 bb 41 91 50 00 f6 78 aa 83 9c bb 79 7c b7 d8 33 2c")
		bk := k.binderKey("res binder")
		same(t, "binder key", bk, "69 fe 13 1a 3b ba d5 d6 3c 64 ee bc c3 0e 39 5b 9d 81 07 72 6a 13 d0 74 e3 89 db c8 a4 e4 72 56")
		th := unhex(t, "63 22 4b 2e 45 73 f2 d3 45 4c a8 4b 9d 00 9a 04 f6 be 9e 05 71 1a 83 96 47 3a ef a0 1e 92 4a 14")
		same(t, "binder", s.finishedMAC(bk, th), "3a dd 4f b2 d8 fd f8 22 a0 ca 3c f7 67 8e f5 e8 8d ae 99 01 41 c5 92 4d 57 bb 6f a3 1b 9e 5f 9d")
		if bytes.Equal(k.binderKey("ext binder"), bk) {
			t.Error("external and resumption binder keys are equal")
		}
	})
}
