package main

import (
	"fmt"
	"os"
	"testing"
)

// TestMain lets the test binary be the floor figure's relay, as the bench binary is.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "-relay" || os.Args[1] == "-echo") {
		fmt.Fprintln(os.Stderr, runHelper(os.Args[1:])) // it returns only when it fails
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestFloorRow: the floor figure runs its relays, carries its round trips through them and
// counts the relays' CPU.
func TestFloorRow(t *testing.T) {
	for _, allTLS := range []bool{false, true} {
		x, err := (&env{}).floorRow(2000, allTLS)
		if err != nil {
			t.Fatal(err)
		}
		if !(x.value > 0) || !x.noGoal || x.section != "LAN" {
			t.Fatalf("floor row %+v", x)
		}
		t.Logf("%s: %s", x.name, x.valueStr)
	}
}
