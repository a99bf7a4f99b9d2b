-- The billing state machine (DESIGN.md §5) as set-based SQL functions.
-- The daemon calls them through lib/db; tests call them directly. Every
-- function takes the configuration it needs as arguments: the database
-- holds state, the config file holds policy.
--
-- Time: business time (due dates, dunning, succeeded_at) is pl_now(), the
-- test clock in a test database; leases and reconciliation checks are about
-- live processes and a live gateway, so they use the real now().

-- When the current lease was taken (real time). A daemon that starts takes
-- back its own node's leases taken before it started at once, whatever lease
-- length the earlier process ran with; NULL counts as long ago.
ALTER TABLE charge ADD COLUMN lease_taken_at timestamptz;

-- ---------------------------------------------------------------------------
-- Materialise: pledges whose next period has come get their charge rows and
-- advance. With catch_up 'latest' only the newest missed period is charged;
-- older ones are recorded as skipped ('missed_window'). One batch per call;
-- the caller repeats until a call returns pledges = 0.
CREATE FUNCTION pl_materialise(p_tz text, p_charge_time time, p_catch_up text,
                               p_batch integer, p_actor text)
RETURNS TABLE (pledges integer, scheduled integer, skipped integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now   timestamptz := pl_now();
    v_today date := (pl_now() AT TIME ZONE p_tz)::date;
BEGIN
    IF p_catch_up NOT IN ('latest', 'all') THEN
        RAISE EXCEPTION 'catch_up must be latest or all, not %', p_catch_up
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH RECURSIVE due AS (
        SELECT p.id, p.donor_id, p.anchor_day, p.interval_months, p.next_charge_on, p.end_on,
               p.amount_minor, p.currency, p.fund
        FROM pledge p
        WHERE p.status IN ('active', 'past_due')
          AND p.next_charge_on <= v_today
          AND pl_due_at(p.next_charge_on, p_tz, p_charge_time) <= v_now
        ORDER BY p.next_charge_on, p.id
        LIMIT p_batch
        FOR UPDATE SKIP LOCKED
    ), periods AS (
        SELECT d.id AS pledge_id, d.next_charge_on AS period
        FROM due d
        UNION ALL
        SELECT pr.pledge_id, pl_period_after(d.anchor_day, d.interval_months, pr.period)
        FROM periods pr
        JOIN due d ON d.id = pr.pledge_id
        WHERE pl_due_at(pl_period_after(d.anchor_day, d.interval_months, pr.period),
                        p_tz, p_charge_time) <= v_now
    ), bounded AS (
        SELECT pr.pledge_id, pr.period
        FROM periods pr JOIN due d ON d.id = pr.pledge_id
        WHERE d.end_on IS NULL OR pr.period <= d.end_on
    ), last AS (
        SELECT pr.pledge_id, max(pr.period) AS last_period
        FROM periods pr GROUP BY pr.pledge_id
    ), todo AS (
        SELECT b.pledge_id, b.period, d.donor_id, d.amount_minor, d.currency, d.fund,
               CASE WHEN p_catch_up = 'latest' AND b.period < l.last_period
                    THEN 'skipped' ELSE 'scheduled' END AS status
        FROM bounded b
        JOIN due d ON d.id = b.pledge_id
        JOIN last l ON l.pledge_id = b.pledge_id
    ), ins AS (
        INSERT INTO charge (pledge_id, donor_id, period, amount_minor, currency, fund, status,
                            due_at, next_attempt_at, skip_reason, created_at, updated_at)
        SELECT r.pledge_id, r.donor_id, r.period, r.amount_minor, r.currency, r.fund, r.status,
               pl_due_at(r.period, p_tz, p_charge_time),
               CASE WHEN r.status = 'scheduled' THEN pl_due_at(r.period, p_tz, p_charge_time) END,
               CASE WHEN r.status = 'skipped' THEN 'missed_window' END,
               v_now, v_now
        FROM todo r
        ON CONFLICT (pledge_id, period) DO NOTHING
        RETURNING id, pledge_id, period, status
    ), adv AS (
        UPDATE pledge p
        SET next_charge_on = n.next_on,
            status = CASE WHEN p.end_on IS NOT NULL AND n.next_on > p.end_on
                          THEN 'cancelled' ELSE p.status END,
            cancelled_at = CASE WHEN p.end_on IS NOT NULL AND n.next_on > p.end_on
                                THEN v_now ELSE p.cancelled_at END,
            cancel_reason = CASE WHEN p.end_on IS NOT NULL AND n.next_on > p.end_on
                                 THEN 'end date reached' ELSE p.cancel_reason END,
            updated_at = v_now
        FROM (SELECT l.pledge_id,
                     pl_period_after(d.anchor_day, d.interval_months, l.last_period) AS next_on
              FROM last l JOIN due d ON d.id = l.pledge_id) n
        WHERE p.id = n.pledge_id
        RETURNING p.id
    ), ev AS (
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        SELECT v_now, p_actor, 'charge', i.id, i.status,
               jsonb_build_object('pledge_id', i.pledge_id, 'period', i.period)
                 || CASE WHEN i.status = 'skipped'
                         THEN jsonb_build_object('reason', 'missed_window') ELSE '{}' END
        FROM ins i
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM adv)::integer,
           (SELECT count(*) FROM ins WHERE ins.status = 'scheduled')::integer,
           (SELECT count(*) FROM ins WHERE ins.status = 'skipped')::integer
    FROM (SELECT count(*) FROM ev) AS force_events;
END $$;

-- ---------------------------------------------------------------------------
-- Claim: take up to p_limit charges for this node and say what to do with
-- each. Three kinds of work, in this order:
--   recover  charges leased to a dead sender (lease expired, or leased to
--            this very node before p_recover_own_before: by a process that
--            ran before this one started, or by a claim of this one whose
--            commit was lost with its connection): the open attempt is
--            resent with the same key inside the idempotency window (unless
--            its last reply was a saved 5xx), looked up by key after it.
--            p_in_hand lists charges the caller is still sending or
--            recording: never taken back from under it;
--   check    charges whose attempt outcome is unknown and whose next check
--            is due, or whose attempt was last sent before
--            p_check_sent_before (--once checks everything left from before
--            its pass at once);
--   send     due charges (scheduled, or retry_wait whose time has come):
--            a new attempt row with key pledged-<charge>-<attempt> is
--            inserted, using the pledge's current amount and payment
--            method. A charge whose pledge has no usable payment method
--            fails at once (visible, never silently dropped).
-- The lease and the attempt are committed when this statement commits,
-- before anything is sent (write-ahead intent).
CREATE FUNCTION pl_claim(p_owner text, p_limit integer, p_lease interval,
                         p_window interval, p_recover_own_before timestamptz,
                         p_check_sent_before timestamptz,
                         p_actor text, p_in_hand bigint[] DEFAULT NULL)
RETURNS TABLE (charge_id bigint, attempt_no integer, idempotency_key text, mode text,
               recovered boolean,
               amount_minor bigint, currency char(3), customer_ref text, token text,
               gateway text, donor_id bigint, pledge_id bigint, period date, fund text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := pl_now();
    v_real    timestamptz := now();
    v_left    integer := p_limit;
    r         record;
BEGIN
    -- 1. recover expired (or our own, at start-up) leases
    FOR r IN
        SELECT c.id, a.id AS aid, a.attempt_no AS ano, a.idempotency_key AS akey, a.started_at,
               a.http_status AS hstatus,
               a.amount_minor AS amt, a.currency AS cur, m.customer_ref AS cref, m.token AS tok,
               m.gateway AS gw, c.donor_id AS did, c.pledge_id AS pid, c.period AS per,
               c.fund AS f, c.lease_owner
        FROM charge c
        JOIN charge_attempt a ON a.charge_id = c.id AND a.state IN ('in_flight', 'unknown')
        LEFT JOIN payment_method m ON m.id = a.payment_method_id
        WHERE c.status = 'processing'
          AND NOT (c.id = ANY (coalesce(p_in_hand, '{}')))
          AND (c.lease_expires_at < v_real
               OR (c.lease_owner = p_owner
                   AND coalesce(c.lease_taken_at, '-infinity') < p_recover_own_before))
        ORDER BY c.lease_expires_at
        LIMIT v_left
        FOR UPDATE OF c SKIP LOCKED
    LOOP
        UPDATE charge SET lease_owner = p_owner, lease_expires_at = v_real + p_lease,
                          lease_taken_at = v_real, updated_at = v_now
        WHERE id = r.id;
        -- Same rule as for unknown outcomes below: a saved server error is
        -- only replayed by a resend, so it is looked up instead.
        mode := CASE WHEN v_real - r.started_at < p_window AND coalesce(r.hstatus, 0) < 500
                     THEN 'resend' ELSE 'lookup' END;
        -- The dead sender may have sent the attempt: from now on it counts
        -- as sent (a halt never withdraws it, and a lookup's "not found" is
        -- trusted only lookup_settle after the last possible send).
        UPDATE charge_attempt
        SET last_sent_at = CASE WHEN mode = 'resend' THEN v_real
                                ELSE coalesce(last_sent_at, started_at) END
        WHERE id = r.aid;
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        VALUES (v_now, p_actor, 'charge', r.id, 'recovered',
                jsonb_build_object('from', r.lease_owner, 'attempt', r.akey, 'mode', mode));
        charge_id := r.id; attempt_no := r.ano; idempotency_key := r.akey;
        recovered := true;
        amount_minor := r.amt; currency := r.cur; customer_ref := r.cref; token := r.tok;
        gateway := r.gw; donor_id := r.did; pledge_id := r.pid; period := r.per; fund := r.f;
        RETURN NEXT;
        v_left := v_left - 1;
    END LOOP;

    -- 2. unknown outcomes due for a check
    IF v_left > 0 THEN
        FOR r IN
            SELECT c.id, a.id AS aid, a.attempt_no AS ano, a.idempotency_key AS akey,
                   a.started_at, a.http_status AS hstatus,
                   a.amount_minor AS amt, a.currency AS cur, m.customer_ref AS cref,
                   m.token AS tok, m.gateway AS gw, c.donor_id AS did, c.pledge_id AS pid,
                   c.period AS per, c.fund AS f
            FROM charge c
            JOIN charge_attempt a ON a.charge_id = c.id AND a.state = 'unknown'
            LEFT JOIN payment_method m ON m.id = a.payment_method_id
            WHERE c.status = 'unknown'
              AND (a.next_check_at <= v_real
                   OR a.last_sent_at < p_check_sent_before
                   OR (a.last_sent_at IS NULL AND p_check_sent_before IS NOT NULL))
            ORDER BY a.next_check_at
            LIMIT v_left
            FOR UPDATE OF c SKIP LOCKED
        LOOP
            UPDATE charge SET status = 'processing', lease_owner = p_owner,
                              lease_expires_at = v_real + p_lease, lease_taken_at = v_real,
                              updated_at = v_now
            WHERE id = r.id;
            charge_id := r.id; attempt_no := r.ano; idempotency_key := r.akey;
            -- A resend inside the window gets the gateway's saved reply: the
            -- truth after a lost reply, but only the same 500 again after a
            -- saved server error. Those, and anything past the window, are
            -- looked up by key instead.
            mode := CASE WHEN v_real - r.started_at < p_window AND coalesce(r.hstatus, 0) < 500
                         THEN 'resend' ELSE 'lookup' END;
            -- Write-ahead: a resend counts as sent from the moment it may be.
            IF mode = 'resend' THEN
                UPDATE charge_attempt SET last_sent_at = v_real WHERE id = r.aid;
            END IF;
            recovered := false;
            amount_minor := r.amt; currency := r.cur; customer_ref := r.cref; token := r.tok;
            gateway := r.gw; donor_id := r.did; pledge_id := r.pid; period := r.per;
            fund := r.f;
            RETURN NEXT;
            v_left := v_left - 1;
        END LOOP;
    END IF;

    -- 3. due charges: a new attempt each, set based (one statement for the
    -- batch). A charge whose pledge has no usable payment method fails at
    -- once instead (visible, never silently dropped).
    IF v_left > 0 THEN
        RETURN QUERY
        WITH due AS (
            SELECT c.id, c.donor_id AS did, c.pledge_id AS pid, c.period AS per, c.fund AS f,
                   p.amount_minor AS amt, p.currency AS cur, p.payment_method_id AS pmid,
                   m.status AS mstatus, m.customer_ref AS cref, m.token AS tok,
                   m.gateway AS gw
            FROM charge c
            JOIN pledge p ON p.id = c.pledge_id
            LEFT JOIN payment_method m ON m.id = p.payment_method_id
            WHERE c.status IN ('scheduled', 'retry_wait') AND c.next_attempt_at <= v_now
            ORDER BY c.next_attempt_at, c.id
            LIMIT v_left
            FOR UPDATE OF c SKIP LOCKED
        ), bad AS (
            UPDATE charge c SET status = 'failed', failure_code = 'payment_method_invalid',
                                next_attempt_at = NULL, updated_at = v_now
            FROM due d
            WHERE c.id = d.id AND (d.pmid IS NULL OR d.mstatus IS DISTINCT FROM 'active')
            RETURNING c.id, c.pledge_id
        ), bad_pledge AS (
            UPDATE pledge p SET status = 'needs_payment_method', updated_at = v_now
            FROM (SELECT DISTINCT b.pledge_id FROM bad b) x
            WHERE p.id = x.pledge_id AND p.status IN ('active', 'past_due')
            RETURNING p.id
        ), bad_event AS (
            INSERT INTO event (at, actor, entity, entity_id, action, detail)
            SELECT v_now, p_actor, 'charge', b.id, 'failed',
                   jsonb_build_object('reason', 'payment_method_invalid')
            FROM bad b
            RETURNING 1
        ), good AS (
            SELECT d.*, coalesce((SELECT max(a.attempt_no) FROM charge_attempt a
                                  WHERE a.charge_id = d.id), 0) + 1 AS ano
            FROM due d
            WHERE d.pmid IS NOT NULL AND d.mstatus = 'active'
        ), ins AS (
            INSERT INTO charge_attempt (charge_id, attempt_no, idempotency_key, payment_method_id,
                                        amount_minor, currency, state, started_at)
            SELECT g.id, g.ano, 'pledged-' || g.id || '-' || g.ano, g.pmid, g.amt, g.cur,
                   'in_flight', v_real
            FROM good g
            RETURNING 1
        ), upd AS (
            UPDATE charge c SET status = 'processing', lease_owner = p_owner,
                                lease_expires_at = v_real + p_lease, lease_taken_at = v_real,
                                amount_minor = g.amt, updated_at = v_now
            FROM good g
            WHERE c.id = g.id
            RETURNING 1
        )
        SELECT g.id, g.ano, 'pledged-' || g.id || '-' || g.ano, 'send'::text, false, g.amt,
               g.cur, g.cref, g.tok, g.gw, g.did, g.pid, g.per, g.f
        FROM good g
        ORDER BY g.id;
    END IF;
END $$;

-- ---------------------------------------------------------------------------
-- Record one outcome. Guarded by status = 'processing' AND lease_owner = me
-- and by the attempt still being open, so a late or duplicate result
-- changes nothing (returns 'stale'). Outcome classes (DESIGN.md §5):
-- succeeded, declined_soft, declined_hard, action_required, unknown, halt,
-- and not_found (a lookup by key found no trace of the attempt: once the
-- attempt was last sent more than p_lookup_settle ago, so the gateway's
-- search has caught up, it never executed and the charge may get a new
-- key; sooner than that it is still unknown).
CREATE FUNCTION pl_record(p_owner text, p_charge bigint, p_attempt integer, p_outcome text,
                          p_http_status integer, p_gateway_ref text, p_request_id text,
                          p_error_type text, p_error_code text, p_decline_code text,
                          p_advice_code text, p_message text, p_fee_minor bigint,
                          p_sends integer, p_retry_schedule interval[], p_lapse_after integer,
                          p_reconcile_schedule interval[], p_lookup_settle interval,
                          p_actor text)
RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := pl_now();
    v_real    timestamptz := now();
    c         charge%ROWTYPE;
    a         charge_attempt%ROWTYPE;
    v_checks  integer;
    v_failed  boolean := false;
    v_detail  jsonb;
BEGIN
    SELECT * INTO c FROM charge WHERE id = p_charge FOR UPDATE;
    IF NOT FOUND OR c.status <> 'processing' OR c.lease_owner IS DISTINCT FROM p_owner THEN
        RETURN 'stale';
    END IF;
    SELECT * INTO a FROM charge_attempt
    WHERE charge_id = p_charge AND attempt_no = p_attempt AND state IN ('in_flight', 'unknown')
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'stale';
    END IF;

    IF p_outcome = 'not_found'
       AND coalesce(a.last_sent_at, a.started_at) > v_real - coalesce(p_lookup_settle, '0') THEN
        p_outcome := 'unknown';
    END IF;

    v_detail := jsonb_strip_nulls(jsonb_build_object(
        'attempt', a.idempotency_key, 'outcome', p_outcome, 'http_status', p_http_status,
        'gateway_ref', p_gateway_ref, 'request_id', p_request_id, 'error_code', p_error_code,
        'decline_code', p_decline_code, 'advice_code', p_advice_code));

    IF p_outcome IN ('halt', 'withdraw')
       AND a.state = 'in_flight' AND a.sends = 0 AND a.last_sent_at IS NULL THEN
        -- An attempt that was never sent before this claim (the gateway
        -- refused our credentials, or the daemon stopped before sending):
        -- nothing executed. The attempt is withdrawn so no donor's attempt
        -- is burned; the charge goes back exactly as it was.
        DELETE FROM charge_attempt WHERE id = a.id;
        UPDATE charge SET status = CASE WHEN c.dunning_attempts > 0 THEN 'retry_wait'
                                        ELSE 'scheduled' END,
                          lease_owner = NULL, lease_expires_at = NULL
        WHERE id = c.id;
        RETURN CASE p_outcome WHEN 'halt' THEN 'halted' ELSE 'withdrawn' END;
    END IF;

    IF p_outcome IN ('halt', 'withdraw', 'release') THEN
        -- An attempt that may have executed (a resend, a lookup, a recovered
        -- lease), and we learned nothing new: it stays open and the charge
        -- goes back to where the next claim finds it. An unknown outcome
        -- keeps its place on the reconcile schedule; an attempt still in
        -- flight keeps its lease, expired, so it is recovered with its key.
        IF a.state = 'unknown' THEN
            UPDATE charge SET status = 'unknown', lease_owner = NULL, lease_expires_at = NULL
            WHERE id = c.id;
        ELSE
            UPDATE charge SET lease_expires_at = least(lease_expires_at, v_real)
            WHERE id = c.id;
        END IF;
        RETURN 'released';
    END IF;

    UPDATE charge_attempt SET
        -- 'not_found' is not an attempt outcome (the column says what the
        -- gateway answered to a send); the state below tells the story.
        outcome = CASE WHEN p_outcome = 'not_found' THEN outcome ELSE p_outcome END,
        sends = sends + coalesce(p_sends, 0),
        http_status = coalesce(p_http_status, http_status),
        gateway_ref = coalesce(p_gateway_ref, gateway_ref),
        request_id = coalesce(p_request_id, request_id),
        error_type = p_error_type, error_code = p_error_code, decline_code = p_decline_code,
        advice_code = p_advice_code, message = left(p_message, 1000),
        last_sent_at = CASE WHEN coalesce(p_sends, 0) > 0 THEN v_real ELSE last_sent_at END
    WHERE id = a.id;

    IF p_outcome = 'succeeded' THEN
        UPDATE charge_attempt SET state = 'succeeded', finished_at = v_real, next_check_at = NULL
        WHERE id = a.id;
        UPDATE charge SET status = 'succeeded', succeeded_at = v_now, gateway_ref = p_gateway_ref,
                          fee_minor = p_fee_minor, amount_minor = a.amount_minor,
                          currency = a.currency, failure_code = NULL, decline_code = NULL,
                          next_attempt_at = NULL, lease_owner = NULL, lease_expires_at = NULL,
                          updated_at = v_now
        WHERE id = c.id;
        UPDATE pledge SET failed_periods = 0,
                          status = CASE WHEN status = 'past_due' THEN 'active' ELSE status END,
                          updated_at = v_now
        WHERE id = c.pledge_id;

    ELSIF p_outcome = 'declined_soft' THEN
        UPDATE charge_attempt SET state = 'declined', finished_at = v_real, next_check_at = NULL
        WHERE id = a.id;
        IF c.dunning_attempts < coalesce(array_length(p_retry_schedule, 1), 0) THEN
            -- retry_schedule holds offsets from the first decline (1d,3d,5d,7d:
            -- retries on days 1, 3, 5 and 7), like the card networks count.
            UPDATE charge SET status = 'retry_wait', dunning_attempts = dunning_attempts + 1,
                              first_failed_at = coalesce(first_failed_at, v_now),
                              next_attempt_at = coalesce(c.first_failed_at, v_now)
                                                + p_retry_schedule[c.dunning_attempts + 1],
                              failure_code = p_error_code, decline_code = p_decline_code,
                              lease_owner = NULL, lease_expires_at = NULL, updated_at = v_now
            WHERE id = c.id;
            UPDATE pledge SET status = 'past_due', updated_at = v_now
            WHERE id = c.pledge_id AND status = 'active';
            p_outcome := 'retry_wait';
        ELSE
            UPDATE charge SET status = 'failed', failure_code = p_error_code,
                              decline_code = p_decline_code, next_attempt_at = NULL,
                              lease_owner = NULL, lease_expires_at = NULL, updated_at = v_now
            WHERE id = c.id;
            v_failed := true;
        END IF;

    ELSIF p_outcome = 'declined_hard' THEN
        UPDATE charge_attempt SET state = 'declined', finished_at = v_real, next_check_at = NULL
        WHERE id = a.id;
        UPDATE charge SET status = 'failed', failure_code = p_error_code,
                          decline_code = p_decline_code, next_attempt_at = NULL,
                          lease_owner = NULL, lease_expires_at = NULL, updated_at = v_now
        WHERE id = c.id;
        UPDATE payment_method SET status = 'invalid',
                                  invalid_reason = coalesce(p_decline_code, p_error_code,
                                                            'declined'),
                                  updated_at = v_now
        WHERE id = a.payment_method_id AND status = 'active';
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        SELECT v_now, p_actor, 'payment_method', a.payment_method_id, 'invalidated', v_detail
        WHERE a.payment_method_id IS NOT NULL;
        UPDATE pledge SET status = 'needs_payment_method', updated_at = v_now,
                          failed_periods = failed_periods + 1
        WHERE id = c.pledge_id AND status IN ('active', 'past_due');

    ELSIF p_outcome = 'action_required' THEN
        UPDATE charge_attempt SET state = 'action_required', finished_at = v_real,
                                  next_check_at = NULL
        WHERE id = a.id;
        UPDATE charge SET status = 'action_required', failure_code = p_error_code,
                          decline_code = p_decline_code, next_attempt_at = NULL,
                          lease_owner = NULL, lease_expires_at = NULL, updated_at = v_now
        WHERE id = c.id;
        v_failed := true;

    ELSIF p_outcome = 'unknown' THEN
        SELECT count(*) INTO v_checks FROM event
        WHERE entity = 'charge' AND entity_id = c.id AND action = 'unknown'
          AND detail->>'attempt' = a.idempotency_key;
        UPDATE charge_attempt SET state = 'unknown',
            next_check_at = v_real + coalesce(
                p_reconcile_schedule[least(v_checks + 1,
                                           coalesce(array_length(p_reconcile_schedule, 1), 1))],
                interval '1 minute')
        WHERE id = a.id;
        UPDATE charge SET status = 'unknown', lease_owner = NULL, lease_expires_at = NULL,
                          updated_at = v_now
        WHERE id = c.id;

    ELSIF p_outcome = 'not_found' THEN
        -- Looked up after the idempotency window: the gateway never executed
        -- this attempt. It is closed as an error and the charge may be tried
        -- again under a new key.
        UPDATE charge_attempt SET state = 'error', finished_at = v_real, next_check_at = NULL,
                                  error_code = coalesce(p_error_code, 'not_found_at_gateway')
        WHERE id = a.id;
        UPDATE charge SET status = CASE WHEN c.dunning_attempts > 0 THEN 'retry_wait'
                                        ELSE 'scheduled' END,
                          next_attempt_at = v_now, lease_owner = NULL, lease_expires_at = NULL,
                          updated_at = v_now
        WHERE id = c.id;

    ELSE
        RAISE EXCEPTION 'unknown outcome %', p_outcome USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF v_failed THEN
        UPDATE pledge SET failed_periods = failed_periods + 1, updated_at = v_now,
                          status = CASE WHEN status = 'past_due' THEN 'active' ELSE status END
        WHERE id = c.pledge_id;
        UPDATE pledge SET status = 'lapsed', updated_at = v_now, next_charge_on = NULL
        WHERE id = c.pledge_id AND failed_periods >= p_lapse_after
          AND status IN ('active', 'past_due');
        IF FOUND THEN
            INSERT INTO event (at, actor, entity, entity_id, action, detail)
            VALUES (v_now, p_actor, 'pledge', c.pledge_id, 'lapsed',
                    jsonb_build_object('failed_periods', p_lapse_after));
        END IF;
    END IF;

    INSERT INTO event (at, actor, entity, entity_id, action, detail)
    VALUES (v_now, p_actor, 'charge', c.id,
            CASE p_outcome WHEN 'declined_soft' THEN 'failed'
                           WHEN 'declined_hard' THEN 'failed'
                           ELSE p_outcome END,
            v_detail);
    RETURN p_outcome;
END $$;

-- ---------------------------------------------------------------------------
-- Unknown outcomes stuck longer than p_after (since the attempt was first
-- sent) are surfaced, never guessed: each stuck attempt gets one
-- 'unknown_alert' event (once, whichever daemon sees it first), and the
-- caller logs the newly alerted charges. Returns how many are stuck now
-- and the charges alerted by this call.
CREATE FUNCTION pl_unknown_alerts(p_after interval, p_actor text)
RETURNS TABLE (stuck integer, alerted bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_real timestamptz := now();
BEGIN
    RETURN QUERY
    WITH s AS (
        SELECT a.charge_id, a.idempotency_key AS akey, a.started_at
        FROM charge_attempt a
        WHERE a.state IN ('in_flight', 'unknown') AND a.started_at < v_real - p_after
    ), fresh AS (
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        SELECT pl_now(), p_actor, 'charge', s.charge_id, 'unknown_alert',
               jsonb_build_object('attempt', s.akey, 'since', s.started_at)
        FROM s
        WHERE NOT EXISTS (SELECT 1 FROM event e
                          WHERE e.entity = 'charge' AND e.entity_id = s.charge_id
                            AND e.action = 'unknown_alert' AND e.detail->>'attempt' = s.akey)
        RETURNING entity_id
    )
    SELECT (SELECT count(*) FROM s)::integer,
           coalesce((SELECT array_agg(f.entity_id ORDER BY f.entity_id) FROM fresh f),
                    '{}'::bigint[]);
END $$;

-- ---------------------------------------------------------------------------
-- Record a batch of successes in one statement: the common outcome, set
-- based, so a batch of 200 costs four statements instead of 200 function
-- calls. Exactly pl_record's 'succeeded' branch, with the same guards
-- (processing, leased to p_owner, attempt still open); rows that fail a
-- guard are left alone (late or duplicate results). Returns how many were
-- applied; the caller counts the rest as stale.
CREATE FUNCTION pl_record_succeeded(p_owner text, p_charges bigint[], p_attempts integer[],
                                    p_refs text[], p_request_ids text[], p_http integer[],
                                    p_fees bigint[], p_sends integer[], p_actor text)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now   timestamptz := pl_now();
    v_real  timestamptz := now();
    v_count integer;
BEGIN
    WITH input AS (
        SELECT * FROM unnest(p_charges, p_attempts, p_refs, p_request_ids, p_http, p_fees,
                             p_sends) AS t(charge_id, attempt_no, ref, request_id, http, fee, sends)
    ), ok AS (
        SELECT c.id AS charge_id, c.pledge_id, a.id AS attempt_id, a.idempotency_key,
               a.amount_minor, a.currency, i.ref, i.request_id, i.http, i.fee, i.sends
        FROM input i
        JOIN charge c ON c.id = i.charge_id
        JOIN charge_attempt a ON a.charge_id = c.id AND a.attempt_no = i.attempt_no
        WHERE c.status = 'processing' AND c.lease_owner = p_owner
          AND a.state IN ('in_flight', 'unknown')
        ORDER BY c.id
        FOR UPDATE OF c, a
    ), att AS (
        UPDATE charge_attempt a
        SET state = 'succeeded', outcome = 'succeeded', finished_at = v_real, next_check_at = NULL,
            sends = a.sends + coalesce(ok.sends, 0),
            http_status = coalesce(ok.http, a.http_status),
            gateway_ref = coalesce(ok.ref, a.gateway_ref),
            request_id = coalesce(ok.request_id, a.request_id),
            error_type = NULL, error_code = NULL, decline_code = NULL, advice_code = NULL,
            message = NULL,
            last_sent_at = CASE WHEN coalesce(ok.sends, 0) > 0 THEN v_real ELSE a.last_sent_at END
        FROM ok WHERE a.id = ok.attempt_id
        RETURNING a.id
    ), chg AS (
        UPDATE charge c
        SET status = 'succeeded', succeeded_at = v_now, gateway_ref = ok.ref, fee_minor = ok.fee,
            amount_minor = ok.amount_minor, currency = ok.currency, failure_code = NULL,
            decline_code = NULL, next_attempt_at = NULL, lease_owner = NULL,
            lease_expires_at = NULL, updated_at = v_now
        FROM ok WHERE c.id = ok.charge_id
        RETURNING c.id
    ), pl AS (
        UPDATE pledge p
        SET failed_periods = 0, status = CASE WHEN p.status = 'past_due' THEN 'active'
                                              ELSE p.status END,
            updated_at = v_now
        FROM (SELECT DISTINCT pledge_id FROM ok) x
        WHERE p.id = x.pledge_id AND (p.failed_periods <> 0 OR p.status = 'past_due')
        RETURNING p.id
    ), ev AS (
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        SELECT v_now, p_actor, 'charge', ok.charge_id, 'succeeded',
               jsonb_strip_nulls(jsonb_build_object(
                   'attempt', ok.idempotency_key, 'outcome', 'succeeded', 'http_status', ok.http,
                   'gateway_ref', ok.ref, 'request_id', ok.request_id))
        FROM ok
        RETURNING 1
    )
    SELECT count(*) INTO v_count
    FROM chg, (SELECT count(*) FROM att) a2, (SELECT count(*) FROM pl) p2,
         (SELECT count(*) FROM ev) e2;
    RETURN v_count;
END $$;

-- ---------------------------------------------------------------------------
-- A daemon's heartbeat and halt flag, for `pledgectl status` and operators.
CREATE FUNCTION pl_node_report(p_node text, p_pid integer, p_version text, p_halted boolean,
                               p_halt_reason text, p_status_line text)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO daemon_node (node_name, pid, version, started_at, last_seen_at, halted,
                             halt_reason, status_line)
    VALUES (p_node, p_pid, p_version, now(), now(), p_halted, p_halt_reason, p_status_line)
    ON CONFLICT (node_name) DO UPDATE
    SET pid = EXCLUDED.pid, version = EXCLUDED.version, last_seen_at = now(),
        halted = EXCLUDED.halted, halt_reason = EXCLUDED.halt_reason,
        status_line = EXCLUDED.status_line,
        started_at = CASE WHEN daemon_node.pid IS DISTINCT FROM EXCLUDED.pid
                          THEN now() ELSE daemon_node.started_at END
$$;

-- On halt the daemon withdraws the attempt it never got to make.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pledged_daemon') THEN
        GRANT DELETE ON charge_attempt TO pledged_daemon;
    END IF;
END $$;
