-- Finance CSV exports (docs/exports.md): the helpers the COPY queries of
-- lib/export.c are built from. They format cells; they never decide which
-- rows an export holds.
--
-- COPY takes no bind parameters, so an export's range and filters travel as
-- transaction-local settings (pledged.export_from, _to, _status, _fund) set
-- with set_config($1...) in the export's transaction and read back here by
-- pl_export_params(): values never become SQL text.
--
-- The formatting functions are plain SQL expressions so the planner inlines
-- them into the export query (no function call per cell).

-- Minor units as a plain decimal string by the currency's exponent:
-- (2500, 2) -> '25.00', (2500, 0) -> '2500', (1250, 3) -> '1.250',
-- (-150, 2) -> '-1.50', (5, 2) -> '0.05'. Exact for every bigint: digits are
-- moved as text, no numeric division and never a float. NULL in, NULL out.
CREATE FUNCTION pl_export_money(amount_minor bigint, exponent smallint)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN $2 = 0 THEN $1::text
        ELSE CASE WHEN $1 < 0 THEN '-' ELSE '' END
             || left(lpad(ltrim($1::text, '-'), greatest(length(ltrim($1::text, '-')), $2 + 1), '0'), -$2)
             || '.'
             || right(lpad(ltrim($1::text, '-'), greatest(length(ltrim($1::text, '-')), $2 + 1), '0'), $2)
    END
$$;

-- A free-text cell made safe to open in a spreadsheet: text starting with
-- '=', '+', '-', '@', TAB or CR would be run as a formula (CSV/formula
-- injection), so it gets a leading single quote, which spreadsheets show as
-- text and hide. Applied to text that comes from people (names, addresses,
-- references, reasons); never to amounts, dates, ids or status words, so a
-- number stays a number. NULL in, NULL out.
CREATE FUNCTION pl_export_text(t text)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN left($1, 1) IN ('=', '+', '-', '@', E'\t', E'\r') THEN '''' || $1 ELSE $1 END
$$;

-- A point in time as ISO 8601 with the offset of the session time zone
-- (pledgectl sets TimeZone to [billing] timezone): '2026-12-31T23:30:00-05:00'.
-- Whole seconds: fractions are cut, never rounded, so the text never moves
-- to the next day.
CREATE FUNCTION pl_export_time(ts timestamptz)
RETURNS text LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char($1, 'YYYY-MM-DD"T"HH24:MI:SSTZH:TZM')
$$;

-- The export's range and filters, from the transaction-local settings:
-- from_day/to_day inclusive org-local dates (unset: unbounded), statuses
-- and funds as lists (a JSON array of strings; unset or empty: no filter).
CREATE FUNCTION pl_export_params(OUT from_day date, OUT to_day date, OUT statuses text[],
                                 OUT funds text[])
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('pledged.export_from', true), '')::date, '-infinity'),
           coalesce(nullif(current_setting('pledged.export_to', true), '')::date, 'infinity'),
           ARRAY(SELECT jsonb_array_elements_text(coalesce(
               nullif(current_setting('pledged.export_status', true), ''), '[]')::jsonb)),
           ARRAY(SELECT jsonb_array_elements_text(coalesce(
               nullif(current_setting('pledged.export_fund', true), ''), '[]')::jsonb))
$$;

-- The org-local day a charge belongs to in exports: the day it settled
-- (succeeded_at in the session time zone) when it succeeded, else its
-- billing period. The detail and the summary export both group by this.
CREATE FUNCTION pl_export_charge_day(status text, succeeded_at timestamptz, period date)
RETURNS date LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN $1 = 'succeeded' THEN $2::date ELSE $3 END
$$;
