package main

import (
	"reflect"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestBuildIsReproducible(t *testing.T) {
	created := time.Date(2026, 11, 20, 10, 30, 0, 0, time.UTC)
	platform := v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	bin := []byte("\x7fELF not really")
	a, err := Build(bin, platform, created, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	b, err := Build(bin, platform, created, map[string]string{"k": "v"})
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Fatalf("two builds differ: %s %s", da, db)
	}
	// A different binary is a different image.
	c, _ := Build([]byte("other"), platform, created, nil)
	if dc, _ := c.Digest(); dc == da {
		t.Fatal("the binary does not reach the image")
	}

	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cf.Config.Entrypoint, []string{"/kubectl-ks_mc"}) || cf.Config.User != User ||
		cf.Architecture != "arm64" || cf.Variant != "v8" || !cf.Created.Time.Equal(created) {
		t.Errorf("config: entrypoint %v user %q arch %s/%s created %v", cf.Config.Entrypoint, cf.Config.User, cf.Architecture, cf.Variant, cf.Created)
	}
	layers, _ := a.Layers()
	if len(layers) != 2 || len(cf.RootFS.DiffIDs) != 2 || len(cf.History) != 2 {
		t.Errorf("%d layers, %d diff IDs, %d history entries; want 2 each", len(layers), len(cf.RootFS.DiffIDs), len(cf.History))
	}
}
