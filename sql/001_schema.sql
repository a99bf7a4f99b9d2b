-- pledged schema v1: the data model of DESIGN.md §3.
-- The database itself rejects bad data: every status is a CHECK, every
-- amount is a positive bigint of minor units, every reference a foreign key.

CREATE TABLE currency (
    code     char(3)  PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    exponent smallint NOT NULL CHECK (exponent BETWEEN 0 AND 4),
    name     text     NOT NULL DEFAULT ''
);

-- One row: facts about this installation. test_mode is fixed when the
-- database is first migrated (pledgectl migrate --test-mode) and can never
-- be switched on afterwards, so a production database cannot grow a test
-- clock by accident.
CREATE TABLE instance (
    id          boolean     PRIMARY KEY DEFAULT true CHECK (id),
    test_mode   boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- the test clock: NULL means real time; only honoured in test mode
    test_now    timestamptz,
    CHECK (test_now IS NULL OR test_mode)
);

CREATE FUNCTION pl_instance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.test_mode IS DISTINCT FROM OLD.test_mode THEN
        RAISE EXCEPTION 'instance.test_mode is fixed when the database is created'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER instance_guard BEFORE UPDATE ON instance
    FOR EACH ROW EXECUTE FUNCTION pl_instance_guard();

CREATE TABLE donor (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    external_ref  text UNIQUE CHECK (external_ref <> '' AND length(external_ref) <= 200),
    full_name     text NOT NULL CHECK (btrim(full_name) <> '' AND length(full_name) <= 500),
    email         text CHECK (email IS NULL OR (length(email) <= 320 AND email ~ '^[^@[:space:]]+@[^@[:space:]]+$')),
    address_line1 text NOT NULL DEFAULT '' CHECK (length(address_line1) <= 500),
    address_line2 text NOT NULL DEFAULT '' CHECK (length(address_line2) <= 500),
    city          text NOT NULL DEFAULT '' CHECK (length(city) <= 200),
    region        text NOT NULL DEFAULT '' CHECK (length(region) <= 200),
    postal_code   text NOT NULL DEFAULT '' CHECK (length(postal_code) <= 40),
    country       char(2) CHECK (country IS NULL OR country ~ '^[A-Z]{2}$'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payment_method (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    donor_id       bigint NOT NULL REFERENCES donor(id),
    gateway        text   NOT NULL DEFAULT 'stripe' CHECK (gateway ~ '^[a-z][a-z0-9_]*$'),
    customer_ref   text   NOT NULL CHECK (customer_ref <> '' AND length(customer_ref) <= 255),
    token          text   NOT NULL CHECK (token <> '' AND length(token) <= 255),
    brand          text,
    last4          char(4) CHECK (last4 IS NULL OR last4 ~ '^[0-9]{4}$'),
    exp_month      smallint CHECK (exp_month BETWEEN 1 AND 12),
    exp_year       smallint CHECK (exp_year BETWEEN 2000 AND 2200),
    status         text   NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'invalid')),
    invalid_reason text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (gateway, token),
    CHECK ((status = 'invalid') = (invalid_reason IS NOT NULL))
);
CREATE INDEX payment_method_donor ON payment_method (donor_id);

CREATE TABLE pledge (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    donor_id          bigint   NOT NULL REFERENCES donor(id),
    payment_method_id bigint   REFERENCES payment_method(id),
    external_ref      text     UNIQUE CHECK (external_ref <> '' AND length(external_ref) <= 200),
    amount_minor      bigint   NOT NULL CHECK (amount_minor > 0),
    currency          char(3)  NOT NULL REFERENCES currency(code),
    interval_months   smallint NOT NULL DEFAULT 1 CHECK (interval_months IN (1, 3, 6, 12)),
    -- 1..31, or NULL for "the last day of the month"
    anchor_day        smallint CHECK (anchor_day BETWEEN 1 AND 31),
    fund              text     NOT NULL DEFAULT 'general' CHECK (fund <> '' AND length(fund) <= 100),
    status            text     NOT NULL DEFAULT 'active' CHECK (status IN
                          ('active', 'paused', 'past_due', 'needs_payment_method', 'lapsed', 'cancelled')),
    next_charge_on    date,
    start_on          date     NOT NULL,
    end_on            date,
    failed_periods    integer  NOT NULL DEFAULT 0 CHECK (failed_periods >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    cancelled_at      timestamptz,
    cancel_reason     text,
    CHECK (end_on IS NULL OR end_on >= start_on),
    CHECK ((status = 'cancelled') = (cancelled_at IS NOT NULL)),
    CHECK (status NOT IN ('active', 'past_due') OR next_charge_on IS NOT NULL)
);
CREATE INDEX pledge_donor ON pledge (donor_id);
-- the materialiser's scan: active pledges by due date
CREATE INDEX pledge_due ON pledge (next_charge_on) WHERE status IN ('active', 'past_due');

CREATE TABLE charge (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pledge_id        bigint  NOT NULL REFERENCES pledge(id),
    donor_id         bigint  NOT NULL REFERENCES donor(id),
    period           date    NOT NULL,
    amount_minor     bigint  NOT NULL CHECK (amount_minor > 0),
    currency         char(3) NOT NULL REFERENCES currency(code),
    fund             text    NOT NULL,
    status           text    NOT NULL DEFAULT 'scheduled' CHECK (status IN
                         ('scheduled', 'processing', 'retry_wait', 'unknown', 'succeeded',
                          'failed', 'action_required', 'skipped', 'cancelled')),
    due_at           timestamptz NOT NULL,
    next_attempt_at  timestamptz,
    dunning_attempts integer NOT NULL DEFAULT 0 CHECK (dunning_attempts >= 0),
    first_failed_at  timestamptz, -- first soft decline: the dunning schedule counts from it
    lease_owner      text,
    lease_expires_at timestamptz,
    gateway_ref      text,
    fee_minor        bigint  CHECK (fee_minor IS NULL OR fee_minor >= 0),
    refunded_minor   bigint  NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0 AND refunded_minor <= amount_minor),
    failure_code     text,
    decline_code     text,
    skip_reason      text,
    succeeded_at     timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (pledge_id, period),
    CHECK ((status = 'processing') = (lease_owner IS NOT NULL)),
    CHECK ((lease_owner IS NULL) = (lease_expires_at IS NULL)),
    CHECK ((status = 'succeeded') = (succeeded_at IS NOT NULL)),
    CHECK (status <> 'skipped' OR skip_reason IS NOT NULL),
    CHECK (refunded_minor = 0 OR status = 'succeeded')
);
CREATE INDEX charge_donor ON charge (donor_id);
-- claimable: waiting for a first attempt or a dunning retry
CREATE INDEX charge_claimable ON charge (next_attempt_at, id) WHERE status IN ('scheduled', 'retry_wait');
-- leased: in the hands of a daemon; recovered when the lease expires
CREATE INDEX charge_leased ON charge (lease_expires_at) WHERE status = 'processing';
CREATE INDEX charge_unknown ON charge (next_attempt_at) WHERE status = 'unknown';
CREATE INDEX charge_succeeded_at ON charge (succeeded_at) WHERE status = 'succeeded';
CREATE INDEX charge_gateway_ref ON charge (gateway_ref) WHERE gateway_ref IS NOT NULL;

CREATE TABLE charge_attempt (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    charge_id         bigint   NOT NULL REFERENCES charge(id),
    attempt_no        integer  NOT NULL CHECK (attempt_no >= 1),
    idempotency_key   text     NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    payment_method_id bigint   REFERENCES payment_method(id),
    amount_minor      bigint   NOT NULL CHECK (amount_minor > 0),
    currency          char(3)  NOT NULL REFERENCES currency(code),
    state             text     NOT NULL DEFAULT 'in_flight' CHECK (state IN
                          ('in_flight', 'succeeded', 'declined', 'action_required', 'error', 'unknown')),
    outcome           text     CHECK (outcome IS NULL OR outcome IN
                          ('succeeded', 'declined_soft', 'declined_hard', 'action_required',
                           'retry_now', 'unknown', 'halt')),
    sends             integer  NOT NULL DEFAULT 0 CHECK (sends >= 0),
    http_status       smallint,
    gateway_ref       text,
    request_id        text,
    error_type        text,
    error_code        text,
    decline_code      text,
    advice_code       text,
    message           text,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_sent_at      timestamptz,
    next_check_at     timestamptz,
    finished_at       timestamptz,
    UNIQUE (charge_id, attempt_no),
    CHECK ((state IN ('in_flight', 'unknown')) = (finished_at IS NULL))
);
-- at most one attempt whose outcome is not known, per charge
CREATE UNIQUE INDEX charge_attempt_one_open ON charge_attempt (charge_id)
    WHERE state IN ('in_flight', 'unknown');

CREATE TABLE refund (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    charge_id       bigint NOT NULL REFERENCES charge(id),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    kind            text   NOT NULL DEFAULT 'refund' CHECK (kind IN ('refund', 'chargeback')),
    reason          text,
    gateway_ref     text UNIQUE,
    idempotency_key text UNIQUE,
    status          text   NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    actor           text   NOT NULL
);
CREATE INDEX refund_charge ON refund (charge_id);

CREATE TABLE receipt (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number         text    NOT NULL UNIQUE CHECK (number ~ '^[0-9]{4}-[0-9]{6,}$'),
    donor_id       bigint  NOT NULL REFERENCES donor(id),
    tax_year       smallint NOT NULL CHECK (tax_year BETWEEN 2000 AND 2200),
    currency       char(3) NOT NULL REFERENCES currency(code),
    total_minor    bigint  NOT NULL CHECK (total_minor > 0),
    status         text    NOT NULL DEFAULT 'issued' CHECK (status IN ('issued', 'void')),
    replaces_id    bigint  REFERENCES receipt(id),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    voided_at      timestamptz,
    void_reason    text,
    donor_snapshot jsonb   NOT NULL,
    org_snapshot   jsonb   NOT NULL,
    sha256         text    CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    file_name      text,
    CHECK ((status = 'void') = (voided_at IS NOT NULL)),
    CHECK (status <> 'void' OR void_reason IS NOT NULL),
    CHECK (left(number, 4)::smallint = tax_year)
);
-- one live receipt per donor, year and currency
CREATE UNIQUE INDEX receipt_one_live ON receipt (donor_id, tax_year, currency) WHERE status = 'issued';

-- receipt numbers: sequential per tax year, never reused
CREATE TABLE receipt_counter (
    tax_year smallint PRIMARY KEY,
    last_no  integer NOT NULL CHECK (last_no >= 0)
);

CREATE TABLE receipt_line (
    receipt_id   bigint NOT NULL REFERENCES receipt(id),
    charge_id    bigint NOT NULL REFERENCES charge(id),
    received_on  date   NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (receipt_id, charge_id)
);
CREATE INDEX receipt_line_charge ON receipt_line (charge_id);

-- Gateway webhook events already processed (deduplication by event id).
CREATE TABLE webhook_event (
    gateway     text NOT NULL,
    event_id    text NOT NULL,
    type        text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway, event_id)
);

-- Daemons report here so operators can see who is alive and whether
-- billing is halted.
CREATE TABLE daemon_node (
    node_name    text PRIMARY KEY,
    pid          integer,
    version      text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    halted       boolean NOT NULL DEFAULT false,
    halt_reason  text,
    status_line  text
);

-- Append-only audit log of every state change and who made it.
CREATE TABLE event (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text   NOT NULL CHECK (actor <> ''),
    entity    text   NOT NULL CHECK (entity IN
                  ('donor', 'payment_method', 'pledge', 'charge', 'charge_attempt',
                   'refund', 'receipt', 'import', 'clock', 'daemon')),
    entity_id bigint,
    action    text   NOT NULL CHECK (action <> ''),
    detail    jsonb  NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX event_entity ON event (entity, entity_id);

CREATE FUNCTION pl_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'event is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER event_append_only BEFORE UPDATE OR DELETE ON event
    FOR EACH ROW EXECUTE FUNCTION pl_event_append_only();
