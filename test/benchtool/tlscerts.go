package main

import (
	"path/filepath"

	"github.com/hacs/hacs/internal/nbd/tlstest"
)

// writeTLSCerts writes test certificates for the TLS benchmark servers.
func writeTLSCerts(dir string) error {
	ca, err := tlstest.NewCA("hacs bench CA")
	if err != nil {
		return err
	}
	server, err := ca.Issue("server", tlstest.Options{})
	if err != nil {
		return err
	}
	client, err := ca.Issue("client", tlstest.Options{Client: true})
	if err != nil {
		return err
	}
	if err := tlstest.WriteDir(filepath.Join(dir, "server"), ca.CertPEM, "server", server); err != nil {
		return err
	}
	return tlstest.WriteDir(filepath.Join(dir, "client"), ca.CertPEM, "client", client)
}
