// Package agentdbtest builds registry files for tests and benchmarks that
// need many bindings: one transaction of plain inserts into a file whose
// schema agentdb.Open made, where n durable Registers would be n fsyncs
// (minutes for 100,000).
package agentdbtest

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/clawker/clawker-cp/pkg/agentdb"
)

// Synthetic is the i-th of a set of bindings shaped like real ones:
// 64-hex thumbprint and container id, 50 projects, agent-%06d names (so
// the (project, agent name) order is not the order of i).
func Synthetic(i int) agentdb.Agent {
	tp := fmt.Sprintf("%064x", uint64(i)*0x9e3779b97f4a7c15+1)
	cid := fmt.Sprintf("%064x", uint64(i)*0xc2b2ae3d27d4eb4f+7)
	at := time.Unix(1_780_000_000, 0).Add(time.Duration(i) * time.Millisecond).UTC()
	return agentdb.Agent{
		Key: agentdb.Key(tp, cid), Project: fmt.Sprintf("project-%02d", i%50), AgentName: fmt.Sprintf("agent-%06d", i),
		ContainerID: cid, Thumbprint: tp, RegisteredAt: at, LastSeen: at,
	}
}

// Fill writes agent(0) … agent(n-1) into the registry file at path,
// creating it. The bindings must satisfy the schema (unique keys,
// containers and names); Key is computed when empty.
func Fill(tb testing.TB, path string, n int, agent func(int) agentdb.Agent) {
	tb.Helper()
	ctx := context.Background()
	db, err := agentdb.Open(ctx, path)
	if err != nil {
		tb.Fatal(err)
	}
	if err := db.Close(); err != nil {
		tb.Fatal(err)
	}
	raw, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		tb.Fatal(err)
	}
	defer raw.Close()
	tx, err := raw.BeginTx(ctx, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	stmt, err := tx.PrepareContext(ctx, "INSERT INTO agents (key, project, agent_name, container_id, thumbprint, registered_at, last_seen) VALUES (?, ?, ?, ?, ?, ?, ?)")
	if err != nil {
		tb.Fatal(err)
	}
	defer stmt.Close()
	for i := range n {
		a := agent(i)
		if a.Key == "" {
			a.Key = agentdb.Key(a.Thumbprint, a.ContainerID)
		}
		if _, err := stmt.ExecContext(ctx, a.Key, a.Project, a.AgentName, a.ContainerID, a.Thumbprint, a.RegisteredAt.UnixNano(), a.LastSeen.UnixNano()); err != nil {
			tb.Fatalf("agentdbtest: inserting binding %d (%s/%s): %v", i, a.Project, a.AgentName, err)
		}
	}
	if err := tx.Commit(); err != nil {
		tb.Fatal(err)
	}
}
