-- Gateway webhooks: refunds and disputes reported by the gateway.
--
-- pl_webhook_record() applies one verified, parsed event in the caller's
-- transaction: the webhook_event row (deduplication by event id), the refund
-- or chargeback rows, charge.refunded_minor, and the event audit rows. The
-- daemon (daemon/pledged_http.c) calls it once per delivery; every outcome
-- is a row, so the caller decides the HTTP status:
--
--   duplicate         the event id was seen before: nothing changed
--   unknown_charge    no charge has this payment intent: nothing recorded
--                     (not even the event id, so a redelivery after the
--                     charge is known would still count)
--   not_succeeded     the charge is not succeeded (yet): nothing recorded;
--                     the gateway should redeliver later
--   currency_mismatch the event's currency is not the charge's: the event
--                     id and an audit row are recorded, no money
--   recorded          at least one refund/chargeback row was written
--   already_recorded  every refund the event lists was known already
--
-- Refunds are matched by their gateway reference (re_...), which pledgectl's
-- `charge refund` stores once the gateway confirms; a refund pledgectl
-- committed as pending and whose confirmation never arrived is matched by
-- the pledged_refund metadata tag (its row id) and completed here. A refund
-- not started by pledged (the gateway's dashboard) gets a new row. When the
-- event lists no refunds (newer API versions do not expand them), the
-- difference between the charge's amount_refunded and what the database
-- holds is recorded under the stable reference "<event id>".
--
-- A chargeback (dispute created) is recorded as a refund row of kind
-- 'chargeback' with the dispute's reference (dp_...): the disputed funds
-- leave the organisation when the dispute opens. It counts into
-- refunded_minor (capped at what is not refunded yet), so receipts net it
-- out and pledgectl cannot refund the same money again.

CREATE FUNCTION pl_webhook_record(
    p_gateway text, p_event_id text, p_type text, p_payment_ref text, p_object_ref text,
    p_currency text, p_amount bigint, p_amount_refunded bigint,
    p_refund_refs text[], p_refund_amounts bigint[], p_refund_tags text[],
    p_reason text, p_actor text)
RETURNS TABLE (outcome text, charge_id bigint, recorded integer, recorded_minor bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_now    timestamptz := pl_now();
    ch       record;
    v_left   bigint;
    v_amount bigint;
    v_known  bigint;
    v_id     bigint;
    v_pid    bigint;
    v_pamount bigint;
    v_rows   jsonb := '[]'::jsonb;
    i        integer;
BEGIN
    recorded := 0;
    recorded_minor := 0;

    -- the charge first, locked: refunds of one charge are applied one event
    -- at a time, and pledgectl's refund takes the same lock
    SELECT c.id, c.status, c.amount_minor, c.refunded_minor, c.currency INTO ch
      FROM charge c
     WHERE p_payment_ref IS NOT NULL AND p_payment_ref <> '' AND c.gateway_ref = p_payment_ref
     ORDER BY (c.status = 'succeeded') DESC, c.id
     LIMIT 1
       FOR UPDATE;
    IF NOT FOUND THEN
        -- seen before? say so (a replay), else it is not one of ours
        IF EXISTS (SELECT 1 FROM webhook_event w
                    WHERE w.gateway = p_gateway AND w.event_id = p_event_id) THEN
            outcome := 'duplicate';
        ELSE
            outcome := 'unknown_charge';
        END IF;
        RETURN NEXT;
        RETURN;
    END IF;
    charge_id := ch.id;

    INSERT INTO webhook_event (gateway, event_id, type, received_at)
    VALUES (p_gateway, p_event_id, p_type, now())
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        outcome := 'duplicate';
        RETURN NEXT;
        RETURN;
    END IF;

    IF ch.status <> 'succeeded' THEN
        -- undo the webhook_event row: the redelivery must be processed
        RAISE EXCEPTION USING ERRCODE = 'PLW01',
            MESSAGE = format('charge %s is %s, not succeeded', ch.id, ch.status);
    END IF;

    IF upper(p_currency) IS DISTINCT FROM ch.currency THEN
        INSERT INTO event (at, actor, entity, entity_id, action, detail)
        VALUES (v_now, p_actor, 'charge', ch.id, 'webhook_rejected',
                jsonb_build_object('event_id', p_event_id, 'type', p_type,
                                   'reason', 'currency mismatch', 'currency', p_currency,
                                   'object', p_object_ref));
        outcome := 'currency_mismatch';
        RETURN NEXT;
        RETURN;
    END IF;

    v_left := ch.amount_minor - ch.refunded_minor;

    IF p_type = 'charge.refunded' THEN
        IF coalesce(array_length(p_refund_refs, 1), 0) > 0 THEN
            FOR i IN 1 .. array_length(p_refund_refs, 1) LOOP
                CONTINUE WHEN EXISTS (SELECT 1 FROM refund r WHERE r.gateway_ref = p_refund_refs[i]);
                v_amount := p_refund_amounts[i];
                v_id := NULL;
                v_pid := NULL;
                IF p_refund_tags[i] IS NOT NULL AND p_refund_tags[i] <> '' THEN
                    -- pledgectl's pending refund whose answer it never saw
                    UPDATE refund r SET status = 'succeeded', gateway_ref = p_refund_refs[i]
                     WHERE r.id = p_refund_tags[i]::bigint AND r.charge_id = ch.id
                       AND r.status = 'pending' AND r.kind = 'refund'
                    RETURNING r.id, r.amount_minor INTO v_pid, v_pamount;
                    IF v_pid IS NOT NULL THEN
                        v_id := v_pid;
                        v_amount := v_pamount;
                    END IF;
                END IF;
                IF v_amount > v_left THEN
                    RAISE EXCEPTION USING ERRCODE = 'PLW02',
                        MESSAGE = format('refund %s of %s exceeds the %s not yet refunded on charge %s',
                                         p_refund_refs[i], v_amount, v_left, ch.id);
                END IF;
                IF v_id IS NULL THEN
                    INSERT INTO refund (charge_id, amount_minor, kind, reason, gateway_ref, status,
                                        created_at, actor)
                    VALUES (ch.id, v_amount, 'refund', nullif(p_reason, ''), p_refund_refs[i],
                            'succeeded', v_now, p_actor)
                    RETURNING id INTO v_id;
                END IF;
                v_left := v_left - v_amount;
                recorded := recorded + 1;
                recorded_minor := recorded_minor + v_amount;
                v_rows := v_rows || jsonb_build_object('refund_id', v_id, 'gateway_ref',
                                                       p_refund_refs[i], 'amount_minor', v_amount);
                INSERT INTO event (at, actor, entity, entity_id, action, detail)
                VALUES (v_now, p_actor, 'refund', v_id, 'succeeded',
                        jsonb_build_object('charge_id', ch.id, 'amount_minor', v_amount,
                                           'gateway_ref', p_refund_refs[i],
                                           'event_id', p_event_id));
            END LOOP;
        ELSE
            -- no list: what the gateway says is refunded beyond what we hold
            SELECT coalesce(sum(r.amount_minor), 0) INTO v_known
              FROM refund r
             WHERE r.charge_id = ch.id AND r.kind = 'refund' AND r.status = 'succeeded';
            v_amount := least(p_amount_refunded - v_known, v_left);
            IF v_amount > 0 THEN
                INSERT INTO refund (charge_id, amount_minor, kind, reason, gateway_ref, status,
                                    created_at, actor)
                VALUES (ch.id, v_amount, 'refund', nullif(p_reason, ''), p_event_id, 'succeeded',
                        v_now, p_actor)
                ON CONFLICT (gateway_ref) DO NOTHING
                RETURNING id INTO v_id;
                IF v_id IS NOT NULL THEN
                    recorded := 1;
                    recorded_minor := v_amount;
                    v_rows := jsonb_build_array(jsonb_build_object(
                        'refund_id', v_id, 'gateway_ref', p_event_id, 'amount_minor', v_amount));
                    INSERT INTO event (at, actor, entity, entity_id, action, detail)
                    VALUES (v_now, p_actor, 'refund', v_id, 'succeeded',
                            jsonb_build_object('charge_id', ch.id, 'amount_minor', v_amount,
                                               'gateway_ref', p_event_id,
                                               'event_id', p_event_id));
                END IF;
            END IF;
        END IF;
    ELSIF p_type = 'charge.dispute.created' THEN
        v_amount := least(p_amount, v_left);
        IF v_amount > 0 THEN
            INSERT INTO refund (charge_id, amount_minor, kind, reason, gateway_ref, status,
                                created_at, actor)
            VALUES (ch.id, v_amount, 'chargeback', nullif(p_reason, ''), p_object_ref,
                    'succeeded', v_now, p_actor)
            ON CONFLICT (gateway_ref) DO NOTHING
            RETURNING id INTO v_id;
            IF v_id IS NOT NULL THEN
                recorded := 1;
                recorded_minor := v_amount;
                v_rows := jsonb_build_array(jsonb_build_object(
                    'refund_id', v_id, 'gateway_ref', p_object_ref, 'amount_minor', v_amount));
                INSERT INTO event (at, actor, entity, entity_id, action, detail)
                VALUES (v_now, p_actor, 'refund', v_id, 'chargeback',
                        jsonb_build_object('charge_id', ch.id, 'amount_minor', v_amount,
                                           'disputed_minor', p_amount,
                                           'gateway_ref', p_object_ref, 'reason', p_reason,
                                           'event_id', p_event_id));
            END IF;
        END IF;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'PLW03',
            MESSAGE = format('webhook type %s is not recorded', p_type);
    END IF;

    IF recorded_minor > 0 THEN
        UPDATE charge c SET refunded_minor = c.refunded_minor + recorded_minor, updated_at = v_now
         WHERE c.id = ch.id;
    END IF;

    INSERT INTO event (at, actor, entity, entity_id, action, detail)
    VALUES (v_now, p_actor, 'charge', ch.id, 'webhook',
            jsonb_build_object('event_id', p_event_id, 'type', p_type, 'object', p_object_ref,
                               'recorded', v_rows, 'recorded_minor', recorded_minor));
    outcome := CASE WHEN recorded > 0 THEN 'recorded' ELSE 'already_recorded' END;
    RETURN NEXT;
END $$;
