package cpboot

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// hashCacheFile, in Paths.StateDir, remembers the embedded binaries' hash
// for the clawker executable that computed it. Hashing them (~180 MB with
// the Ory servers) costs a few hundred milliseconds, the whole of a green
// `controlplane up` otherwise; the cache makes that path one HTTP request
// and one inspect.
const hashCacheFile = "binhash.cache"

type hashCache struct {
	Exe  string `json:"exe"` // exeIdentity of the clawker that wrote it
	Hash string `json:"hash"`
}

// cachedHash returns the hash recorded for this executable, "" when there
// is none (or the identity of the executable cannot be told).
func cachedHash(stateDir string) string {
	id := exeIdentity()
	if id == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(stateDir, hashCacheFile))
	if err != nil {
		return ""
	}
	var c hashCache
	if json.Unmarshal(b, &c) != nil || c.Exe != id || len(c.Hash) != 16 {
		return ""
	}
	return c.Hash
}

// storeHash records hash for this executable; failures are ignored (the
// cache is an optimisation).
func storeHash(stateDir, hash string) {
	id := exeIdentity()
	if id == "" {
		return
	}
	b, err := json.Marshal(hashCache{Exe: id, Hash: hash})
	if err != nil {
		return
	}
	if os.MkdirAll(stateDir, 0o700) != nil {
		return
	}
	tmp, err := os.CreateTemp(stateDir, "."+hashCacheFile+".*")
	if err != nil {
		return
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if werr != nil || cerr != nil || os.Rename(tmp.Name(), filepath.Join(stateDir, hashCacheFile)) != nil {
		_ = os.Remove(tmp.Name())
	}
}
