// Package version holds weft's version, set at build time with
// -ldflags "-X github.com/weftnet/weft/internal/version.Version=...".
package version

// Version of this build.
var Version = "dev"
