package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/libp2p/go-libp2p/core/crypto"
)

// LoadOrCreateIdentity returns the Ed25519 key in home/identity.key, creating
// it (mode 0600) on first start. A file that is not a valid key is an error
// naming the file, and the file is left as it is.
func LoadOrCreateIdentity(home string) (crypto.PrivKey, error) {
	path := filepath.Join(home, IdentityFile)
	data, err := os.ReadFile(path)
	if err == nil {
		return decodeIdentity(path, data)
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read identity %s: %w", path, err)
	}
	sk, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("generate identity: %w", err)
	}
	data, err = crypto.MarshalPrivateKey(sk)
	if err != nil {
		return nil, fmt.Errorf("encode identity: %w", err)
	}
	if err := writeFileExclusive(path, data, 0o600); err != nil {
		if errors.Is(err, os.ErrExist) { // created by someone else meanwhile
			return LoadIdentity(home)
		}
		return nil, fmt.Errorf("create identity: %w", err)
	}
	return sk, nil
}

// LoadIdentity reads home/identity.key without creating it.
func LoadIdentity(home string) (crypto.PrivKey, error) {
	path := filepath.Join(home, IdentityFile)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read identity %s: %w", path, err)
	}
	return decodeIdentity(path, data)
}

func decodeIdentity(path string, data []byte) (crypto.PrivKey, error) {
	sk, err := crypto.UnmarshalPrivateKey(data)
	if err != nil {
		return nil, fmt.Errorf("identity %s: %w: %v", path, ErrCorruptFile, err)
	}
	if sk.Type() != crypto.Ed25519 {
		return nil, fmt.Errorf("identity %s: %w: key type %v, want Ed25519", path, ErrCorruptFile, sk.Type())
	}
	return sk, nil
}
