package clawkercli

// SetBuild replaces the commit and the embedded binaries' hash that
// --version and `controlplane status` report, until the returned func
// restores them.
func SetBuild(commit string, hash func() (string, error)) (restore func()) {
	oldCommit, oldHash := buildCommit, embeddedHash
	buildCommit = func() string { return commit }
	embeddedHash = hash
	return func() { buildCommit, embeddedHash = oldCommit, oldHash }
}
