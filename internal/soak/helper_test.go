package soak

import "os"

// helperDispatch runs the test binary as a helper process when WEFT_SOAK_HELPER says so
// (see security_test.go); it reports whether it did, with the exit code.
func helperDispatch() (int, bool) {
	switch os.Getenv("WEFT_SOAK_HELPER") {
	case "":
		return 0, false
	case "rogue":
		return rogueGossip(), true
	}
	return 2, true
}
