// Package agentdb is the control plane's agent registry: a sqlite database
// (modernc.org/sqlite, no cgo) that records which mTLS identity is bound to
// which agent container.
//
// A binding is keyed by Key(thumbprint, containerID), where thumbprint is the
// hex SHA-256 of the public key (SubjectPublicKeyInfo, DER) of the agent's
// leaf certificate as captured from the live TLS handshake
// (certs.KeyThumbprint) and containerID is the container the certificate
// names. The key, not the leaf: `clawker run` gives an agent a chain of
// short leaves for one key, and clawkerd moving on to the next leaf must
// keep its binding. The registry survives CP restarts; the CP is its only
// writer.
//
// Bindings made before (schema 1 rows written by a CP that keyed on the
// leaf's DER) hold a leaf thumbprint, from which no SQL migration can
// recover the key. Register upgrades such a row in its own transaction the
// first time its agent presents that very leaf (Agent.LeafThumbprint): the
// row is rewritten to the key thumbprint and its new Key.
//
// # Binding rules
//
// Register enforces these, in one transaction:
//
//   - The same (thumbprint, container) registering again is idempotent: the
//     stored row is returned unchanged with created=false (a row of the
//     leaf-keyed schema is upgraded, see above).
//   - A container id is never rebound. If the container is already bound to a
//     different thumbprint, or to a different (project, agent_name), Register
//     fails with ErrContainerBound and the stored row is left alone. A binding
//     ends only when its container goes away (DeleteByContainer).
//   - (project, agent_name) is unique. A new container registering a name that
//     another container holds replaces that row: Docker names agent containers
//     clawker.<project>.<agent> and container names are unique per daemon, so a
//     second container carrying the name means the first one is gone (removed
//     or renamed). The caller must have checked, before calling Register, that
//     the container id in the certificate really carries that project and
//     agent name (its Docker labels); the registry cannot see Docker.
//
// # Durability
//
// The database runs in WAL mode with synchronous=FULL, so a Register that has
// returned survives a crash of the process or a power loss.
package agentdb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/pressly/goose/v3"
	"modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Sentinel errors; match them with errors.Is.
var (
	// ErrNotFound: no binding has the requested key.
	ErrNotFound = errors.New("agentdb: agent not found")
	// ErrContainerBound: the container is already bound to a different
	// identity (another certificate thumbprint, or another project/agent
	// name). A container id is never rebound.
	ErrContainerBound = errors.New("agentdb: container already bound to a different identity")
	// ErrInvalidAgent: Register was given an incomplete or malformed Agent.
	ErrInvalidAgent = errors.New("agentdb: invalid agent")
	// ErrDiskFull: a write was refused because the filesystem holding the
	// registry has no space left. The transaction was rolled back: every
	// binding made before is kept, and the next write after space was
	// freed works.
	ErrDiskFull = errors.New("agentdb: the disk holding the registry is full")
)

// sqliteFull and sqliteIOErr are SQLite's primary result codes for a full
// database or disk and for an I/O error (ENOSPC in a WAL write may come
// back as either).
const (
	sqliteIOErr = 10
	sqliteFull  = 13
)

// diskFull turns a write's failure caused by a full filesystem into
// ErrDiskFull, naming the directory to free space in.
func (d *DB) diskFull(err error) error {
	var se *sqlite.Error
	full := errors.Is(err, syscall.ENOSPC)
	if errors.As(err, &se) {
		code := se.Code() & 0xff
		full = full || code == sqliteFull || (code == sqliteIOErr && strings.Contains(se.Error(), "disk is full"))
	}
	if !full {
		return err
	}
	return fmt.Errorf("%w (%s): free space there; no binding was lost, and the write can be retried (%v)", ErrDiskFull, filepath.Dir(d.path), err)
}

// Agent is one registry binding.
type Agent struct {
	// Key is Key(Thumbprint, ContainerID); Register computes it.
	Key         string
	Project     string
	AgentName   string
	ContainerID string
	// Thumbprint is the lowercase hex SHA-256 of the leaf certificate's
	// public key (certs.KeyThumbprint).
	Thumbprint string
	// LeafThumbprint, given to Register, is the hex SHA-256 of the leaf's
	// DER (certs.Thumbprint): a row that still holds it (made by a CP that
	// keyed on the leaf) is this agent's binding, upgraded to Thumbprint.
	// Not stored; "" skips the upgrade.
	LeafThumbprint string
	// RegisteredAt is when the binding was created; LastSeen is the latest
	// sign of life recorded for it. Both are returned in UTC.
	RegisteredAt time.Time
	LastSeen     time.Time
}

// Key returns the registry key of a binding: the lowercase hex SHA-256 of the
// thumbprint followed by the container id. The thumbprint has a fixed length
// (64 hex characters), so the concatenation is unambiguous.
func Key(thumbprint, containerID string) string {
	h := sha256.New()
	h.Write([]byte(thumbprint))
	h.Write([]byte(containerID))
	return hex.EncodeToString(h.Sum(nil))
}

//go:embed migrations/*.sql
var migrationFiles embed.FS

// readerConns bounds the read pool. Reads are short (List copies rows out
// and returns), so a few connections are plenty.
const readerConns = 4

// busyTimeoutMS is how long a connection waits on a lock held by another
// connection before failing with SQLITE_BUSY.
const busyTimeoutMS = 5000

// DB is an open agent registry. Its methods are safe for concurrent use.
//
// It holds two connection pools on the same file:
//
//   - writer has exactly one connection (SetMaxOpenConns(1)). The CP is the
//     only writer, and sqlite admits one writer at a time anyway; funnelling
//     every write through one connection queues concurrent writers in Go
//     instead of having them spin on SQLITE_BUSY, and makes each
//     check-then-write transaction in Register trivially serialized.
//     Transactions begin IMMEDIATE so a write lock is taken up front.
//   - reader is a small pool of query_only connections. In WAL mode readers
//     do not block the writer and the writer does not block them, so
//     ListAgents and Get keep answering while registrations are committing
//     (each commit waits for an fsync). A read sees every write committed
//     before it started.
type DB struct {
	path   string
	writer *sql.DB
	reader *sql.DB
}

// Open opens (creating if needed) the registry at path and applies any
// pending schema migrations. The parent directory is created with mode 0700
// and the database file with mode 0600.
func Open(ctx context.Context, path string) (*DB, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("agentdb: open: %q is not a file path; pass the registry's file path (e.g. under the CP's data directory)", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("agentdb: open %s: %w", path, err)
	}
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agentdb: create directory %s: %w (check that the CP's data directory is mounted and writable)", dir, err)
	}
	// Create the file ourselves so it is 0600 from the start; sqlite gives
	// the -wal and -shm files the same mode as the database file.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agentdb: open %s: %w (check the file's owner and permissions, or move it aside to start an empty registry)", abs, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("agentdb: open %s: %w", abs, err)
	}

	writer, err := sql.Open("sqlite", dsn(abs, false))
	if err != nil {
		return nil, fmt.Errorf("agentdb: open %s: %w", abs, err)
	}
	writer.SetMaxOpenConns(1)
	writer.SetMaxIdleConns(1)
	writer.SetConnMaxLifetime(0)
	writer.SetConnMaxIdleTime(0)

	d := &DB{path: abs, writer: writer}
	if err := d.init(ctx); err != nil {
		_ = writer.Close()
		return nil, err
	}

	reader, err := sql.Open("sqlite", dsn(abs, true))
	if err != nil {
		_ = writer.Close()
		return nil, fmt.Errorf("agentdb: open %s: %w", abs, err)
	}
	reader.SetMaxOpenConns(readerConns)
	reader.SetMaxIdleConns(readerConns)
	reader.SetConnMaxLifetime(0)
	reader.SetConnMaxIdleTime(0)
	if err := reader.PingContext(ctx); err != nil {
		_ = reader.Close()
		_ = writer.Close()
		return nil, fmt.Errorf("agentdb: open %s for reading: %w", abs, err)
	}
	d.reader = reader
	return d, nil
}

// dsn builds the modernc.org/sqlite connection string. Every pragma is set
// on every new connection by the driver.
func dsn(path string, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeoutMS))
	q.Add("_pragma", "foreign_keys(1)")
	// synchronous=FULL: in WAL mode every commit fsyncs the WAL, so an
	// acknowledged registration survives power loss (NORMAL would not).
	q.Add("_pragma", "synchronous(FULL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		// journal_mode is persistent in the file; the writer sets it.
		q.Add("_pragma", "journal_mode(WAL)")
		q.Set("_txlock", "immediate")
	}
	u := url.URL{Scheme: "file", OmitHost: true, Path: path, RawQuery: q.Encode()}
	return u.String()
}

// init checks the writer connection and migrates the schema.
func (d *DB) init(ctx context.Context) error {
	var mode string
	if err := d.writer.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("agentdb: open %s: %w (if it is not a sqlite database, move it aside to start an empty registry)", d.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("agentdb: open %s: journal mode is %q, want wal (the file system may not support WAL's shared memory; keep the registry on a local disk)", d.path, mode)
	}

	migrations, err := fs.Sub(migrationFiles, "migrations")
	if err != nil {
		return fmt.Errorf("agentdb: migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, d.writer, migrations,
		goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(goose.NopLogger()),
	)
	if err != nil {
		return fmt.Errorf("agentdb: migrations: %w", err)
	}
	current, target, err := p.GetVersions(ctx)
	if err != nil {
		return fmt.Errorf("agentdb: read schema version of %s: %w (if the file is damaged, move it aside to start an empty registry)", d.path, err)
	}
	if current > target {
		return fmt.Errorf("agentdb: %s has schema version %d but this clawker-cp knows only up to %d: it was written by a newer clawker-cp; upgrade clawker-cp, or move the file aside to start an empty registry", d.path, current, target)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("agentdb: migrate %s from schema version %d to %d: %w (the file is unchanged past the last good version; fix the cause or move the file aside)", d.path, current, target, err)
	}
	return nil
}

// Path returns the absolute path of the database file.
func (d *DB) Path() string { return d.path }

// Close closes both pools. The writer closes last, so sqlite checkpoints the
// WAL into the main file on the final close.
func (d *DB) Close() error {
	var errs []error
	if d.reader != nil {
		errs = append(errs, d.reader.Close())
	}
	if d.writer != nil {
		errs = append(errs, d.writer.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("agentdb: close %s: %w", d.path, err)
	}
	return nil
}

const agentColumns = "key, project, agent_name, container_id, thumbprint, registered_at, last_seen"

type rowScanner interface{ Scan(dest ...any) error }

func scanAgent(r rowScanner) (Agent, error) {
	var a Agent
	var reg, seen int64
	if err := r.Scan(&a.Key, &a.Project, &a.AgentName, &a.ContainerID, &a.Thumbprint, &reg, &seen); err != nil {
		return Agent{}, err
	}
	a.RegisteredAt = fromNanos(reg)
	a.LastSeen = fromNanos(seen)
	return a, nil
}

func toNanos(t time.Time) int64     { return t.UnixNano() }
func fromNanos(n int64) time.Time   { return time.Unix(0, n).UTC() }
func prefix(s string, n int) string { return s[:min(len(s), n)] }

// validThumbprint reports whether s is a lowercase hex SHA-256.
func validThumbprint(s string) bool {
	if len(s) != sha256.Size*2 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// validTime reports whether t is representable as unix nanoseconds.
func validTime(t time.Time) bool {
	return t.After(time.Unix(0, 0)) && t.Before(time.Unix(0, 1<<63-1))
}

// Register binds a.ContainerID to a.Thumbprint under (a.Project,
// a.AgentName), following the rules in the package documentation, in one
// transaction. It returns the stored binding and whether it was created by
// this call.
//
// a.Key is computed; if set, it must equal Key(a.Thumbprint, a.ContainerID).
// A zero a.RegisteredAt means now. a.LastSeen is raised to at least
// a.RegisteredAt. An idempotent re-registration writes nothing.
func (d *DB) Register(ctx context.Context, a Agent) (Agent, bool, error) {
	return d.register(ctx, a, true)
}

// RegisterExisting is Register for a caller that may not create a binding
// (an agent without the token a new one needs): when a.ContainerID is not
// bound yet it fails with an error wrapping ErrNotFound and writes
// nothing; otherwise it answers as Register (ErrContainerBound for a
// container bound to another key or name: refusing that needs no token).
// The lookup and the decision are one transaction, so a binding removed
// meanwhile is never made again without the caller's permission.
func (d *DB) RegisterExisting(ctx context.Context, a Agent) (Agent, error) {
	ag, _, err := d.register(ctx, a, false)
	return ag, err
}

func (d *DB) register(ctx context.Context, a Agent, mayCreate bool) (Agent, bool, error) {
	switch {
	case a.Project == "" || a.AgentName == "":
		return Agent{}, false, fmt.Errorf("%w: project and agent name are required (got %q/%q)", ErrInvalidAgent, a.Project, a.AgentName)
	case a.ContainerID == "":
		return Agent{}, false, fmt.Errorf("%w: container id is required", ErrInvalidAgent)
	case !validThumbprint(a.Thumbprint):
		return Agent{}, false, fmt.Errorf("%w: thumbprint %q is not a lowercase hex SHA-256", ErrInvalidAgent, prefix(a.Thumbprint, 80))
	}
	key := Key(a.Thumbprint, a.ContainerID)
	if a.Key != "" && a.Key != key {
		return Agent{}, false, fmt.Errorf("%w: key %s does not match thumbprint and container id (want %s)", ErrInvalidAgent, prefix(a.Key, 12), prefix(key, 12))
	}
	a.Key = key
	leafThumbprint := a.LeafThumbprint
	a.LeafThumbprint = "" // an input, never part of a returned row
	if a.RegisteredAt.IsZero() {
		a.RegisteredAt = time.Now()
	}
	if a.LastSeen.Before(a.RegisteredAt) {
		a.LastSeen = a.RegisteredAt
	}
	if !validTime(a.RegisteredAt) || !validTime(a.LastSeen) {
		return Agent{}, false, fmt.Errorf("%w: times %v / %v out of range", ErrInvalidAgent, a.RegisteredAt, a.LastSeen)
	}
	a.RegisteredAt = fromNanos(toNanos(a.RegisteredAt))
	a.LastSeen = fromNanos(toNanos(a.LastSeen))

	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register: begin: %w", d.diskFull(err))
	}
	defer func() { _ = tx.Rollback() }()

	existing, err := scanAgent(tx.QueryRowContext(ctx,
		"SELECT "+agentColumns+" FROM agents WHERE container_id = ?", a.ContainerID))
	if errors.Is(err, sql.ErrNoRows) && !mayCreate {
		// The container is not bound: a new binding.
		return Agent{}, false, fmt.Errorf("%w: key %s (container %s is not bound)", ErrNotFound, prefix(key, 12), prefix(a.ContainerID, 12))
	}
	legacy := err == nil && leafThumbprint != "" && existing.Thumbprint == leafThumbprint
	switch {
	case err == nil:
		if existing.Thumbprint != a.Thumbprint && !legacy {
			return Agent{}, false, fmt.Errorf("%w: container %s is bound to thumbprint %s…, not %s…",
				ErrContainerBound, prefix(a.ContainerID, 12), prefix(existing.Thumbprint, 12), prefix(a.Thumbprint, 12))
		}
		if existing.Project != a.Project || existing.AgentName != a.AgentName {
			return Agent{}, false, fmt.Errorf("%w: container %s (thumbprint %s…) is bound to %s/%s, not %s/%s",
				ErrContainerBound, prefix(a.ContainerID, 12), prefix(a.Thumbprint, 12),
				existing.Project, existing.AgentName, a.Project, a.AgentName)
		}
		if legacy {
			return d.upgradeLegacy(ctx, tx, existing, a)
		}
		return existing, false, nil
	case errors.Is(err, sql.ErrNoRows):
	default:
		return Agent{}, false, fmt.Errorf("agentdb: register: look up container %s: %w", prefix(a.ContainerID, 12), err)
	}

	// The container is new. Whatever container held this name before is
	// gone (see the package documentation): its row is replaced.
	if _, err := tx.ExecContext(ctx,
		"DELETE FROM agents WHERE project = ? AND agent_name = ?", a.Project, a.AgentName); err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register: release %s/%s: %w", a.Project, a.AgentName, d.diskFull(err))
	}
	if _, err := tx.ExecContext(ctx,
		"INSERT INTO agents ("+agentColumns+") VALUES (?, ?, ?, ?, ?, ?, ?)",
		a.Key, a.Project, a.AgentName, a.ContainerID, a.Thumbprint,
		toNanos(a.RegisteredAt), toNanos(a.LastSeen)); err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register %s/%s: insert: %w", a.Project, a.AgentName, d.diskFull(err))
	}
	if err := tx.Commit(); err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register %s/%s: commit: %w", a.Project, a.AgentName, d.diskFull(err))
	}
	return a, true, nil
}

// upgradeLegacy rewrites a leaf-keyed row (see the package documentation)
// to a's key thumbprint and key, in tx, and commits.
func (d *DB) upgradeLegacy(ctx context.Context, tx *sql.Tx, existing, a Agent) (Agent, bool, error) {
	if _, err := tx.ExecContext(ctx, "UPDATE agents SET key = ?, thumbprint = ? WHERE container_id = ?",
		a.Key, a.Thumbprint, a.ContainerID); err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register %s/%s: upgrade to the key thumbprint: %w", a.Project, a.AgentName, d.diskFull(err))
	}
	if err := tx.Commit(); err != nil {
		return Agent{}, false, fmt.Errorf("agentdb: register %s/%s: upgrade to the key thumbprint: commit: %w", a.Project, a.AgentName, d.diskFull(err))
	}
	existing.Key, existing.Thumbprint = a.Key, a.Thumbprint
	return existing, false, nil
}

// List returns every binding, ordered by project then agent name.
func (d *DB) List(ctx context.Context) ([]Agent, error) {
	rows, err := d.reader.QueryContext(ctx,
		"SELECT "+agentColumns+" FROM agents ORDER BY project, agent_name")
	if err != nil {
		return nil, fmt.Errorf("agentdb: list: %w", err)
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("agentdb: list: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("agentdb: list: %w", err)
	}
	return out, nil
}

// Get returns the binding with the given key, or an error wrapping
// ErrNotFound.
func (d *DB) Get(ctx context.Context, key string) (Agent, error) {
	a, err := scanAgent(d.reader.QueryRowContext(ctx,
		"SELECT "+agentColumns+" FROM agents WHERE key = ?", key))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, fmt.Errorf("%w: key %s", ErrNotFound, prefix(key, 12))
	}
	if err != nil {
		return Agent{}, fmt.Errorf("agentdb: get %s: %w", prefix(key, 12), err)
	}
	return a, nil
}

// TouchLastSeen records signs of life for a batch of agents (key -> time) in
// one transaction. last_seen only moves forward: an older time than the
// stored one is ignored. Unknown keys (bindings deleted meanwhile) and zero
// times are skipped.
func (d *DB) TouchLastSeen(ctx context.Context, seen map[string]time.Time) error {
	if len(seen) == 0 {
		return nil
	}
	tx, err := d.writer.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("agentdb: touch last seen: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx,
		"UPDATE agents SET last_seen = ?1 WHERE key = ?2 AND last_seen < ?1")
	if err != nil {
		return fmt.Errorf("agentdb: touch last seen: prepare: %w", err)
	}
	defer stmt.Close()
	for key, t := range seen {
		if !validTime(t) {
			continue
		}
		if _, err := stmt.ExecContext(ctx, toNanos(t), key); err != nil {
			return fmt.Errorf("agentdb: touch last seen %s: %w", prefix(key, 12), err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("agentdb: touch last seen: commit: %w", err)
	}
	return nil
}

// DeleteByContainer removes the binding of a container (call it when the
// container is destroyed) and returns how many rows it removed: 0 or 1.
func (d *DB) DeleteByContainer(ctx context.Context, containerID string) (int, error) {
	res, err := d.writer.ExecContext(ctx, "DELETE FROM agents WHERE container_id = ?", containerID)
	if err != nil {
		return 0, fmt.Errorf("agentdb: delete container %s: %w", prefix(containerID, 12), err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("agentdb: delete container %s: %w", prefix(containerID, 12), err)
	}
	return int(n), nil
}

// IntegrityCheck runs PRAGMA integrity_check and returns an error listing
// the problems it reports, if any.
func (d *DB) IntegrityCheck(ctx context.Context) error {
	rows, err := d.reader.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("agentdb: integrity check: %w", err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("agentdb: integrity check: %w", err)
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("agentdb: integrity check: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("agentdb: integrity check of %s failed (stop the CP, move the file aside and restart to rebuild the registry; agents re-register on reconnect): %s",
			d.path, strings.Join(problems, "; "))
	}
	return nil
}

// Ping proves the database file is readable: a query that touches the agents
// table through the read pool. The CP's /healthz probe uses it.
func (d *DB) Ping(ctx context.Context) error {
	var one int
	err := d.reader.QueryRowContext(ctx, `SELECT 1 FROM agents LIMIT 1`).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	return err
}
