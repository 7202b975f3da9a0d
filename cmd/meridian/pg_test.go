package main

import (
	"testing"

	"github.com/meridian-iot/meridian/storage/storagetest"
)

// testPGURL is a fresh database for one test (storagetest.NewPostgresDB).
func testPGURL(t testing.TB) string { return storagetest.NewPostgresDB(t) }
