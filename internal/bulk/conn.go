package bulk

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// MaxRecord is the most plaintext one record carries. A reader's buffer is
// this size, whatever a peer declares.
const MaxRecord = 512 << 10

const (
	headerLen = 4
	tagLen    = 16
	finBit    = 1 << 31
)

// Errors a Conn's reads return for what arrived. An ErrRecord cannot be
// pinned on the peer: the path may have altered the header or the tag, so
// a caller treats it as a failed connection, not as the peer's offence.
var (
	ErrRecord    = errors.New("bulk: bad record")
	ErrTruncated = errors.New("bulk: connection ended without an end record")
)

// Stream is what a transfer reads and writes: a libp2p stream, or a Conn
// upgraded from one.
type Stream interface {
	io.Reader
	io.Writer
	Close() error
	CloseWrite() error
	Reset() error
	SetDeadline(time.Time) error
	SetReadDeadline(time.Time) error
	SetWriteDeadline(time.Time) error
}

// bufPool holds record buffers; a transfer takes two and gives them back
// when it ends.
var bufPool = sync.Pool{New: func() any { b := make([]byte, headerLen+MaxRecord+tagLen); return &b }}

// Conn is one direct TCP connection carrying AES-128-GCM records:
//
//	header (4 bytes, big endian: bit 31 end of stream, bits 0–30 plaintext length ≤ MaxRecord)
//	ciphertext of that length, then its 16-byte tag; the header is the additional data
//
// Each direction has its own key and counts its records from 0 in the
// nonce, so a record dropped, replayed, reordered or moved to the other
// direction fails authentication. The end of stream is a record too: a
// connection that ends without one was cut, and its reader gets
// ErrTruncated rather than a clean io.EOF.
type Conn struct {
	c    rawConn
	peer peer.ID

	wmu     sync.Mutex
	seal    cipher.AEAD
	wbuf    *[]byte
	wctr    uint64
	wclosed bool

	rmu  sync.Mutex
	open cipher.AEAD
	rbuf *[]byte
	rpos int // plaintext of the current record is rbuf[headerLen+rpos : headerLen+rend]
	rend int
	rctr uint64
	rerr error // sticky: a stream read past an error is no longer in step

	closeOnce sync.Once
}

// rawConn is the connection under the records: a *net.TCPConn.
type rawConn interface {
	net.Conn
	CloseWrite() error
}

func newConn(c rawConn, p peer.ID, sendKey, recvKey []byte) (*Conn, error) {
	seal, err := newGCM(sendKey)
	if err != nil {
		return nil, err
	}
	open, err := newGCM(recvKey)
	if err != nil {
		return nil, err
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return &Conn{c: c, peer: p, seal: seal, open: open}, nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

func nonce(ctr uint64) []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], ctr)
	return n[:]
}

// RemotePeer is the peer the keys were agreed with.
func (c *Conn) RemotePeer() peer.ID { return c.peer }

// Write seals p into records of at most MaxRecord bytes, one write(2) each.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return 0, fmt.Errorf("bulk: write after close")
	}
	if c.wbuf == nil {
		c.wbuf = bufPool.Get().(*[]byte)
	}
	done := 0
	for done < len(p) {
		n := min(len(p)-done, MaxRecord)
		if err := c.writeRecord(p[done:done+n], 0); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// writeRecord seals one record; the caller holds wmu and wbuf.
func (c *Conn) writeRecord(p []byte, flags uint32) error {
	buf := *c.wbuf
	binary.BigEndian.PutUint32(buf[:headerLen], uint32(len(p))|flags)
	out := c.seal.Seal(buf[:headerLen], nonce(c.wctr), p, buf[:headerLen])
	c.wctr++
	_, err := c.c.Write(out)
	return err
}

// CloseWrite sends the end record and shuts the connection's write side.
func (c *Conn) CloseWrite() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wclosed {
		return nil
	}
	c.wclosed = true
	if c.wbuf == nil {
		c.wbuf = bufPool.Get().(*[]byte)
	}
	if err := c.writeRecord(nil, finBit); err != nil {
		return err
	}
	// The end record is the stream's end. The other side may have read it
	// and gone already, so the socket's shutdown failing is no error.
	_ = c.c.CloseWrite()
	return nil
}

// Read returns plaintext in order. A record is authenticated whole before
// any of it is returned; where p holds a whole record's plaintext it is
// opened straight into p, without a copy.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.rpos < c.rend {
			n := copy(p, (*c.rbuf)[headerLen+c.rpos:headerLen+c.rend])
			c.rpos += n
			return n, nil
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if len(p) == 0 {
			return 0, nil
		}
		if c.rbuf == nil {
			c.rbuf = bufPool.Get().(*[]byte)
		}
		n, err := c.readRecord(p)
		if err != nil {
			c.rerr = err
			return 0, err
		}
		if n > 0 {
			return n, nil
		}
	}
}

// readRecord reads and opens one record. It returns n > 0 when the
// plaintext went straight into p, else leaves it in rbuf (rpos, rend).
func (c *Conn) readRecord(p []byte) (int, error) {
	buf := *c.rbuf
	hdr := buf[:headerLen]
	if _, err := io.ReadFull(c.c, hdr); err != nil {
		if errors.Is(err, io.EOF) {
			return 0, ErrTruncated
		}
		return 0, err
	}
	word := binary.BigEndian.Uint32(hdr)
	n := int(word &^ finBit)
	fin := word&finBit != 0
	switch {
	case n > MaxRecord:
		return 0, fmt.Errorf("%w: record %d declares %d bytes, limit %d", ErrRecord, c.rctr, n, MaxRecord)
	case fin && n != 0:
		return 0, fmt.Errorf("%w: end record %d carries %d bytes", ErrRecord, c.rctr, n)
	}
	ct := buf[headerLen : headerLen+n+tagLen]
	if _, err := io.ReadFull(c.c, ct); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return 0, ErrTruncated
		}
		return 0, err
	}
	// Opened straight into p where the record fits; else in place.
	direct := len(p) >= n && n > 0
	dst := ct[:0]
	if direct {
		dst = p[:0]
	}
	if _, err := c.open.Open(dst, nonce(c.rctr), ct, hdr); err != nil {
		return 0, fmt.Errorf("%w: record %d fails authentication", ErrRecord, c.rctr)
	}
	c.rctr++
	if fin {
		return 0, io.EOF
	}
	if direct {
		return n, nil
	}
	c.rpos, c.rend = 0, n
	return 0, nil
}

// Close ends the stream cleanly (an end record, if not sent yet) and
// closes the connection.
func (c *Conn) Close() error {
	err := c.CloseWrite()
	c.shut(false)
	return err
}

// Reset drops the connection at once; the other side's reads fail.
func (c *Conn) Reset() error {
	c.shut(true)
	return nil
}

// shut closes the socket, which ends blocked reads and writes, then gives
// the buffers back once no read or write holds them.
func (c *Conn) shut(abort bool) {
	c.closeOnce.Do(func() {
		if tc, ok := c.c.(*net.TCPConn); ok && abort {
			_ = tc.SetLinger(0)
		}
		_ = c.c.Close()
	})
	c.wmu.Lock()
	c.wclosed = true
	if c.wbuf != nil {
		bufPool.Put(c.wbuf)
		c.wbuf = nil
	}
	c.wmu.Unlock()
	c.rmu.Lock()
	if c.rbuf != nil {
		bufPool.Put(c.rbuf)
		c.rbuf = nil
	}
	c.rpos, c.rend = 0, 0
	if c.rerr == nil {
		c.rerr = net.ErrClosed
	}
	c.rmu.Unlock()
}

func (c *Conn) SetDeadline(t time.Time) error      { return c.c.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.c.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }
