package tlspsk

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// A record that straddles the end of the read buffer: fill moves the
// buffered bytes to its front, and the record header used as the AEAD's
// additional data must be taken again from there (it was not: streams of
// writes in sizes that are not multiples of a record failed with
// bad_record_mac while the other side echoed them).
func TestReadRecordAcrossCompaction(t *testing.T) {
	keys := Keys{"alice": bytes.Repeat([]byte{0x42}, 32)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echoErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echoErr <- err
			return
		}
		defer c.Close()
		s := Server(c, nil, &Config{Keys: keys})
		_, err = io.Copy(s, s)
		echoErr <- err
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	cl := Client(nc, &Config{Keys: keys, Identity: "alice"})
	defer cl.Close()
	data := make([]byte, 4<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	writeErr := make(chan error, 1)
	go func() {
		for off := 0; off < len(data); off += 70000 {
			if _, err := cl.Write(data[off:min(off+70000, len(data))]); err != nil {
				writeErr <- err
				return
			}
		}
		writeErr <- cl.CloseWrite()
	}()
	got := make([]byte, len(data))
	if _, err := io.ReadFull(cl, got); err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("echo differs")
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if err := <-echoErr; err != nil {
		t.Fatalf("echo server: %v", err)
	}
}
