-- The SQLite schema of the last release before Alembic (git show dcde087:idra/controlplane/store.py, SCHEMA):
-- tests/controlplane/test_migrations.py upgrades a file made with it.
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL UNIQUE,
    public_ip TEXT NOT NULL,
    public_key TEXT NOT NULL,
    listen_port INTEGER NOT NULL,
    region TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'active',
    drain_reason TEXT,
    drain_started_at REAL,
    registered_at REAL NOT NULL,
    last_heartbeat_at REAL,
    reported_state TEXT,
    active_peers INTEGER NOT NULL DEFAULT 0,
    stats TEXT,
    nftables_baseline TEXT,
    root_readonly_baseline INTEGER NOT NULL DEFAULT 0,
    account_id TEXT,
    credential_sha256 TEXT,
    identity_refusals INTEGER NOT NULL DEFAULT 0,
    identity_refused_at REAL
);
CREATE TABLE IF NOT EXISTS retired (instance_id TEXT PRIMARY KEY, retired_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    public_key TEXT PRIMARY KEY,
    node_id TEXT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    slot INTEGER NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS peers_node ON peers(node_id);
CREATE INDEX IF NOT EXISTS peers_node_slot ON peers(node_id, slot);
CREATE TABLE IF NOT EXISTS canaries (
    node_id TEXT PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    slot INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS canaries_key ON canaries(public_key);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    created_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE INDEX IF NOT EXISTS changes_node ON changes(node_id, version);
CREATE INDEX IF NOT EXISTS changes_age ON changes(created_at);
CREATE INDEX IF NOT EXISTS nodes_key ON nodes(public_key);
CREATE TRIGGER IF NOT EXISTS nodes_key_insert BEFORE INSERT ON nodes BEGIN SELECT RAISE(ABORT, 'public key in use by another node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key AND id != NEW.id); SELECT RAISE(ABORT, 'public key in use by a client') WHERE EXISTS (SELECT 1 FROM peers WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a canary peer') WHERE EXISTS (SELECT 1 FROM canaries WHERE public_key = NEW.public_key); END;
CREATE TRIGGER IF NOT EXISTS nodes_key_update BEFORE UPDATE OF public_key ON nodes BEGIN SELECT RAISE(ABORT, 'public key in use by another node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key AND id != NEW.id); SELECT RAISE(ABORT, 'public key in use by a client') WHERE EXISTS (SELECT 1 FROM peers WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a canary peer') WHERE EXISTS (SELECT 1 FROM canaries WHERE public_key = NEW.public_key); END;
CREATE TRIGGER IF NOT EXISTS peers_key_insert BEFORE INSERT ON peers BEGIN SELECT RAISE(ABORT, 'public key in use by a node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a canary peer') WHERE EXISTS (SELECT 1 FROM canaries WHERE public_key = NEW.public_key); END;
CREATE TRIGGER IF NOT EXISTS peers_key_update BEFORE UPDATE OF public_key ON peers BEGIN SELECT RAISE(ABORT, 'public key in use by a node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a canary peer') WHERE EXISTS (SELECT 1 FROM canaries WHERE public_key = NEW.public_key); END;
CREATE TRIGGER IF NOT EXISTS canaries_key_insert BEFORE INSERT ON canaries BEGIN SELECT RAISE(ABORT, 'public key in use by a node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a client') WHERE EXISTS (SELECT 1 FROM peers WHERE public_key = NEW.public_key); END;
CREATE TRIGGER IF NOT EXISTS canaries_key_update BEFORE UPDATE OF public_key ON canaries BEGIN SELECT RAISE(ABORT, 'public key in use by a node') WHERE EXISTS (SELECT 1 FROM nodes WHERE public_key = NEW.public_key); SELECT RAISE(ABORT, 'public key in use by a client') WHERE EXISTS (SELECT 1 FROM peers WHERE public_key = NEW.public_key); END;
