-- Calendar and clock rules. These are the only implementation of them:
-- C code asks PostgreSQL and never re-implements calendar arithmetic.

-- The period date in the month containing `in_month` for an anchor day:
-- min(anchor, days in that month), or the month's last day when the anchor
-- is NULL ("last"). Anchor 31: Jan 31, Feb 28/29, Mar 31, Apr 30.
CREATE FUNCTION pl_period_date(anchor integer, in_month date) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    first_day date;
    last_day  date;
BEGIN
    IF in_month IS NULL THEN
        RETURN NULL;
    END IF;
    IF anchor IS NOT NULL AND (anchor < 1 OR anchor > 31) THEN
        RAISE EXCEPTION 'anchor day % is outside 1..31', anchor USING ERRCODE = 'invalid_parameter_value';
    END IF;
    first_day := date_trunc('month', in_month)::date;
    last_day := (first_day + interval '1 month' - interval '1 day')::date;
    IF anchor IS NULL OR first_day + (anchor - 1) > last_day THEN
        RETURN last_day;
    END IF;
    RETURN first_day + (anchor - 1);
END $$;

-- The period after `period` for a pledge billed every `interval_months`
-- months: computed from the anchor, never from the previous date, so a
-- clamped February date does not drag March back to the 28th.
CREATE FUNCTION pl_period_after(anchor integer, interval_months integer, period date) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF interval_months NOT IN (1, 3, 6, 12) THEN
        RAISE EXCEPTION 'interval of % months is not one of 1, 3, 6, 12', interval_months
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN pl_period_date(anchor, (date_trunc('month', period) + make_interval(months => interval_months))::date);
END $$;

-- The first period date on or after `d` (a pledge's start, or a resume).
CREATE FUNCTION pl_period_on_or_after(anchor integer, d date) RETURNS date
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    p date := pl_period_date(anchor, d);
BEGIN
    IF p >= d THEN
        RETURN p;
    END IF;
    RETURN pl_period_date(anchor, (date_trunc('month', d) + interval '1 month')::date);
END $$;

-- "Now" for billing: the test clock when this database was created in test
-- mode and the clock is set, the real time otherwise.
CREATE FUNCTION pl_now() RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT test_now FROM instance WHERE test_mode), now())
$$;

-- The organisation's local date at pl_now().
CREATE FUNCTION pl_today(tz text) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (pl_now() AT TIME ZONE tz)::date
$$;

-- When a period dated `period` becomes due: charge_time local time on that
-- date in the organisation's time zone.
CREATE FUNCTION pl_due_at(period date, tz text, charge_time time) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (period + charge_time) AT TIME ZONE tz
$$;
