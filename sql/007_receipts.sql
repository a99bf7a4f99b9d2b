-- Year-end tax receipts (DESIGN.md §3, docs/receipts.md): which gifts a
-- receipt covers, numbering, void and reissue. lib/receipts.c drives these
-- functions; the rules live here only.
--
-- Concurrency: every change to the receipts of a tax year runs in a
-- transaction that first takes pl_receipt_lock(year), a transaction-level
-- advisory lock. Number allocation serialises on the receipt_counter row
-- anyway, so a per-donor lock would buy no parallelism and would add a
-- lock-order (donor vs counter) deadlock; one lock per year is simpler and
-- deadlock-free. Each statement after the lock sees what the previous
-- holder committed (READ COMMITTED), so a second `generate` finds the first
-- one's receipts and issues nothing twice. The unique index
-- receipt_one_live stays the backstop.

-- The signature image printed on receipts, frozen by content: the org
-- snapshot names it by sha256, so later changes of the file do not change
-- how an issued receipt renders.
CREATE TABLE receipt_image (
    sha256     text        PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    png        bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A receipt is replaced at most once; the lookup "what replaced X".
CREATE UNIQUE INDEX receipt_replaced_once ON receipt (replaces_id) WHERE replaces_id IS NOT NULL;
CREATE INDEX receipt_year ON receipt (tax_year, donor_id);

-- An issued receipt is never edited or deleted: the only changes allowed
-- are issued -> void (with when and why) and recording the file's name and
-- sha256 once.
CREATE FUNCTION pl_receipt_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'receipt % cannot be deleted; void it instead', OLD.number
            USING ERRCODE = 'check_violation';
    END IF;
    IF (NEW.number, NEW.donor_id, NEW.tax_year, NEW.currency, NEW.total_minor, NEW.replaces_id,
        NEW.issued_at, NEW.donor_snapshot, NEW.org_snapshot)
       IS DISTINCT FROM
       (OLD.number, OLD.donor_id, OLD.tax_year, OLD.currency, OLD.total_minor, OLD.replaces_id,
        OLD.issued_at, OLD.donor_snapshot, OLD.org_snapshot)
       OR (OLD.status = 'void' AND (NEW.status, NEW.voided_at, NEW.void_reason)
                                   IS DISTINCT FROM (OLD.status, OLD.voided_at, OLD.void_reason))
       OR (OLD.sha256 IS NOT NULL AND NEW.sha256 IS DISTINCT FROM OLD.sha256)
       OR (OLD.file_name IS NOT NULL AND NEW.file_name IS DISTINCT FROM OLD.file_name) THEN
        RAISE EXCEPTION 'receipt % is issued and cannot be changed; void it and issue a replacement',
            OLD.number USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER receipt_guard BEFORE UPDATE OR DELETE ON receipt
    FOR EACH ROW EXECUTE FUNCTION pl_receipt_guard();

CREATE FUNCTION pl_receipt_line_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'receipt lines are part of an issued receipt and cannot be changed'
        USING ERRCODE = 'check_violation';
END $$;
CREATE TRIGGER receipt_line_guard BEFORE UPDATE OR DELETE ON receipt_line
    FOR EACH ROW EXECUTE FUNCTION pl_receipt_line_guard();

-- The lock every writer of a tax year's receipts takes first (see the top).
CREATE FUNCTION pl_receipt_lock(p_year integer) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(1886155363, p_year) -- 1886155363 = 'plrc'
$$;

-- Next number of a tax year: "2026-000123". The counter row is updated in
-- the caller's transaction, so a rollback gives the number back (no gaps)
-- and a committed number is never handed out again.
CREATE FUNCTION pl_receipt_next_number(p_year integer) RETURNS text
LANGUAGE sql AS $$
    INSERT INTO receipt_counter AS c (tax_year, last_no) VALUES (p_year, 1)
    ON CONFLICT (tax_year) DO UPDATE SET last_no = c.last_no + 1
    RETURNING p_year::text || '-' || lpad(c.last_no::text, greatest(6, length(c.last_no::text)), '0')
$$;

-- The gifts a receipt for `p_year` covers: succeeded charges whose org-local
-- date (time zone p_tz) of succeeded_at falls in the year, net of refunds;
-- fully refunded gifts and charged-back gifts are excluded.
CREATE FUNCTION pl_receipt_gifts(p_year integer, p_tz text, p_donor bigint DEFAULT NULL)
RETURNS TABLE (donor_id bigint, currency char(3), charge_id bigint, received_on date,
               amount_minor bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.donor_id, c.currency, c.id, (c.succeeded_at AT TIME ZONE p_tz)::date,
           c.amount_minor - c.refunded_minor
      FROM charge c
     WHERE c.status = 'succeeded'
       AND c.succeeded_at >= (make_date(p_year, 1, 1)::timestamp AT TIME ZONE p_tz)
       AND c.succeeded_at < (make_date(p_year + 1, 1, 1)::timestamp AT TIME ZONE p_tz)
       AND c.refunded_minor < c.amount_minor
       AND (p_donor IS NULL OR c.donor_id = p_donor)
       AND NOT EXISTS (SELECT 1 FROM refund r
                        WHERE r.charge_id = c.id AND r.kind = 'chargeback'
                          AND r.status = 'succeeded')
$$;

-- Why a donor cannot get a receipt under the jurisdiction's rules, or NULL.
CREATE FUNCTION pl_receipt_donor_problem(d donor, p_need_address boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_need_address AND (btrim(d.address_line1) = '' OR btrim(d.city) = ''
                                 OR btrim(d.postal_code) = '')
        THEN 'no postal address (an official receipt must show the donor''s address: '
             || 'set address_line1, city and postal_code)'
    END
$$;

-- What `generate` would do for each (donor, currency) of a tax year:
--   issue      eligible gifts and no receipt yet
--   replace    the gifts differ from the live receipt's (refund, late
--              success), or the last receipt was voided: a new number that
--              cancels and replaces the old one
--   void       a live receipt whose gifts have all gone (refunded)
--   unchanged  the live receipt covers exactly the eligible gifts
--   skip       cannot be issued (reason says why)
CREATE FUNCTION pl_receipt_plan(p_year integer, p_tz text, p_donor bigint DEFAULT NULL,
                                p_need_address boolean DEFAULT false)
RETURNS TABLE (donor_id bigint, currency char(3), action text, reason text, live_id bigint,
               live_number text, live_file text, live_sha256 text, replaces_id bigint,
               replaces_number text, total_minor bigint, gifts integer)
LANGUAGE sql STABLE AS $$
    WITH g AS (
        SELECT g.donor_id, g.currency, sum(g.amount_minor)::bigint AS total_minor,
               count(*)::integer AS gifts,
               array_agg(g.charge_id ORDER BY g.charge_id) AS ids,
               array_agg(g.amount_minor ORDER BY g.charge_id) AS amounts
          FROM pl_receipt_gifts(p_year, p_tz, p_donor) g
         GROUP BY g.donor_id, g.currency
    ), live AS (
        SELECT r.id, r.number, r.donor_id, r.currency, r.file_name, r.sha256, l.ids, l.amounts
          FROM receipt r
          CROSS JOIN LATERAL (
              SELECT array_agg(x.charge_id ORDER BY x.charge_id) AS ids,
                     array_agg(x.amount_minor ORDER BY x.charge_id) AS amounts
                FROM receipt_line x WHERE x.receipt_id = r.id) l
         WHERE r.tax_year = p_year AND r.status = 'issued'
           AND (p_donor IS NULL OR r.donor_id = p_donor)
    ), j AS (
        SELECT coalesce(g.donor_id, live.donor_id) AS donor_id,
               coalesce(g.currency, live.currency) AS currency,
               g.total_minor, g.gifts, g.ids AS g_ids, g.amounts AS g_amounts,
               live.id AS live_id, live.number AS live_number, live.file_name, live.sha256,
               live.ids AS l_ids, live.amounts AS l_amounts
          FROM g FULL JOIN live ON live.donor_id = g.donor_id AND live.currency = g.currency
    )
    SELECT j.donor_id, j.currency, a.action,
           CASE WHEN a.action = 'skip' THEN pl_receipt_donor_problem(d, p_need_address)
                WHEN a.action = 'void' THEN 'no eligible gifts remain' END,
           j.live_id, j.live_number, j.file_name, j.sha256,
           coalesce(j.live_id, v.id), coalesce(j.live_number, v.number),
           j.total_minor, coalesce(j.gifts, 0)
      FROM j
      JOIN donor d ON d.id = j.donor_id
      LEFT JOIN LATERAL (
          SELECT r.id, r.number FROM receipt r
           WHERE r.donor_id = j.donor_id AND r.tax_year = p_year AND r.currency = j.currency
             AND r.status = 'void'
             AND NOT EXISTS (SELECT 1 FROM receipt x WHERE x.replaces_id = r.id)
           ORDER BY r.id DESC LIMIT 1) v ON j.live_id IS NULL
      CROSS JOIN LATERAL (SELECT CASE
          WHEN j.total_minor IS NULL THEN 'void'
          WHEN j.live_id IS NOT NULL AND j.g_ids = j.l_ids AND j.g_amounts = j.l_amounts
              THEN 'unchanged'
          WHEN pl_receipt_donor_problem(d, p_need_address) IS NOT NULL THEN 'skip'
          WHEN j.live_id IS NOT NULL OR v.id IS NOT NULL THEN 'replace'
          ELSE 'issue' END AS action) a
     ORDER BY j.donor_id, j.currency
$$;

-- Bring one (donor, currency) of a tax year up to date, inside the
-- caller's transaction, which holds pl_receipt_lock(p_year). Decides again
-- from what is committed now (the plan the caller read may be stale):
-- returns the action taken ('issue', 'replace', 'void', 'unchanged',
-- 'skip', or 'none' when there is nothing to receipt), the receipt issued
-- (or the live one when unchanged), the number it replaces or voided, and a
-- reason for skip/void. p_org is the organisation snapshot (built from the
-- config by the caller).
CREATE FUNCTION pl_receipt_issue(p_year integer, p_tz text, p_donor bigint, p_currency char(3),
                                 p_org jsonb, p_actor text, p_need_address boolean)
RETURNS TABLE (action text, receipt_id bigint, number text, old_number text, reason text)
LANGUAGE plpgsql
-- custom plans: with the donor known, the gifts come from charge_donor, not
-- from a scan of the whole year
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    g_ids     bigint[];
    g_days    date[];
    g_amounts bigint[];
    g_total   bigint;
    l_ids     bigint[];
    l_amounts bigint[];
    live      receipt;
    prev      receipt;
    d         donor;
    problem   text;
    num       text;
    new_id    bigint;
    now_at    timestamptz := pl_now();
BEGIN
    SELECT array_agg(x.charge_id ORDER BY x.charge_id), array_agg(x.received_on ORDER BY x.charge_id),
           array_agg(x.amount_minor ORDER BY x.charge_id), sum(x.amount_minor)::bigint
      INTO g_ids, g_days, g_amounts, g_total
      FROM pl_receipt_gifts(p_year, p_tz, p_donor) x WHERE x.currency = p_currency;

    SELECT * INTO live FROM receipt r
     WHERE r.donor_id = p_donor AND r.tax_year = p_year AND r.currency = p_currency
       AND r.status = 'issued' FOR UPDATE;

    IF live.id IS NOT NULL THEN
        SELECT array_agg(x.charge_id ORDER BY x.charge_id), array_agg(x.amount_minor ORDER BY x.charge_id)
          INTO l_ids, l_amounts FROM receipt_line x WHERE x.receipt_id = live.id;
        IF g_total IS NULL THEN
            UPDATE receipt SET status = 'void', voided_at = now_at,
                   void_reason = 'no eligible gifts remain (refunded)'
             WHERE id = live.id;
            INSERT INTO event (at, actor, entity, entity_id, action, detail)
            VALUES (now_at, p_actor, 'receipt', live.id, 'voided',
                    jsonb_build_object('number', live.number, 'reason', 'no eligible gifts remain'));
            RETURN QUERY SELECT 'void'::text, live.id, NULL::text, live.number,
                                'no eligible gifts remain'::text;
            RETURN;
        END IF;
        IF g_ids = l_ids AND g_amounts = l_amounts THEN
            RETURN QUERY SELECT 'unchanged'::text, live.id, live.number, NULL::text, NULL::text;
            RETURN;
        END IF;
    ELSIF g_total IS NULL THEN
        RETURN QUERY SELECT 'none'::text, NULL::bigint, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;

    SELECT * INTO d FROM donor WHERE id = p_donor;
    problem := pl_receipt_donor_problem(d, p_need_address);
    IF problem IS NOT NULL THEN
        RETURN QUERY SELECT 'skip'::text, live.id, live.number, NULL::text, problem;
        RETURN;
    END IF;

    IF live.id IS NOT NULL THEN
        prev := live;
    ELSE
        SELECT * INTO prev FROM receipt r
         WHERE r.donor_id = p_donor AND r.tax_year = p_year AND r.currency = p_currency
           AND r.status = 'void' AND NOT EXISTS (SELECT 1 FROM receipt x WHERE x.replaces_id = r.id)
         ORDER BY r.id DESC LIMIT 1;
    END IF;

    num := pl_receipt_next_number(p_year);
    IF live.id IS NOT NULL THEN
        UPDATE receipt SET status = 'void', voided_at = now_at,
               void_reason = 'gifts changed; cancelled and replaced by receipt No. ' || num
         WHERE id = live.id;
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        VALUES (now_at, p_actor, 'receipt', live.id, 'voided',
                jsonb_build_object('number', live.number, 'replaced_by', num,
                                   'reason', 'gifts changed'));
    END IF;

    INSERT INTO receipt (number, donor_id, tax_year, currency, total_minor, replaces_id, issued_at,
                         donor_snapshot, org_snapshot)
    VALUES (num, p_donor, p_year, p_currency, g_total, prev.id, now_at,
            jsonb_build_object('id', d.id, 'external_ref', d.external_ref,
                               'full_name', d.full_name, 'email', d.email,
                               'address_line1', d.address_line1, 'address_line2', d.address_line2,
                               'city', d.city, 'region', d.region, 'postal_code', d.postal_code,
                               'country', d.country),
            p_org)
    RETURNING id INTO new_id;

    INSERT INTO receipt_line (receipt_id, charge_id, received_on, amount_minor)
    SELECT new_id, u.id, u.day, u.amount FROM unnest(g_ids, g_days, g_amounts) AS u(id, day, amount);

    INSERT INTO event (at, actor, entity, entity_id, action, detail)
    VALUES (now_at, p_actor, 'receipt', new_id, 'issued',
            jsonb_build_object('number', num, 'donor_id', p_donor, 'tax_year', p_year,
                               'currency', p_currency, 'total_minor', g_total,
                               'gifts', cardinality(g_ids), 'replaces', prev.number));

    RETURN QUERY SELECT CASE WHEN prev.id IS NULL THEN 'issue' ELSE 'replace' END,
                        new_id, num, prev.number, NULL::text;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pledged_ops') THEN
        GRANT SELECT, INSERT ON receipt_image TO pledged_ops;
        GRANT SELECT ON receipt_image TO pledged_daemon, pledged_readonly;
        GRANT EXECUTE ON FUNCTION pl_receipt_lock(integer), pl_receipt_next_number(integer),
            pl_receipt_gifts(integer, text, bigint), pl_receipt_plan(integer, text, bigint, boolean),
            pl_receipt_issue(integer, text, bigint, char, jsonb, text, boolean)
            TO pledged_ops;
    END IF;
END $$;
