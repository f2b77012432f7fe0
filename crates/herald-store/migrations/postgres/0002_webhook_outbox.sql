-- Webhook deliveries waiting to be made (the outbox; see src/lib.rs
-- Store::claim). A client publish's rows are inserted in the message's own
-- transaction, so a committed message never lacks its events and an ingest
-- restart loses none. next_ms: when the row is due; lease_ms/lease_owner:
-- who is delivering it until when (a lease that ran out is claimed again).
CREATE TABLE webhook_outbox (
    id          BIGSERIAL PRIMARY KEY,
    endpoint    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_ms     BIGINT  NOT NULL,
    lease_ms    BIGINT  NOT NULL DEFAULT 0,
    lease_owner TEXT,
    created_ms  BIGINT  NOT NULL
);

CREATE UNIQUE INDEX webhook_outbox_event ON webhook_outbox (endpoint, event_id);
CREATE INDEX webhook_outbox_due ON webhook_outbox (endpoint, next_ms);
