-- The agent registry: one row per (mTLS leaf certificate, container) binding.
--
-- Times are unix nanoseconds (UTC) in INTEGER columns: fixed-width, so they
-- compare and order correctly in SQL (last_seen only moves forward), and need
-- no parsing. In the sqlite3 shell: datetime(last_seen / 1000000000, 'unixepoch').

-- +goose Up
CREATE TABLE agents (
    -- hex SHA-256(thumbprint || container_id); see agentdb.Key.
    key           TEXT    NOT NULL PRIMARY KEY CHECK (length(key) = 64),
    project       TEXT    NOT NULL CHECK (project <> ''),
    agent_name    TEXT    NOT NULL CHECK (agent_name <> ''),
    -- A container id is bound at most once for its lifetime.
    container_id  TEXT    NOT NULL UNIQUE CHECK (container_id <> ''),
    -- hex SHA-256 of the agent's mTLS leaf certificate (DER).
    thumbprint    TEXT    NOT NULL CHECK (length(thumbprint) = 64),
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL,
    -- One binding per agent name; this index also serves List's ordering.
    UNIQUE (project, agent_name)
) STRICT;

-- +goose Down
DROP TABLE agents;
