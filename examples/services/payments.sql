-- The payments service: owns category "payment", imports "order".  An async
-- projection answers every PaymentRequested with PaymentCaptured, or with
-- PaymentDeclined above the card limit, and keeps the ledger.
CREATE EXTENSION IF NOT EXISTS event_store;
CREATE SCHEMA payments;

CREATE TABLE payments.ledger (
    order_id    text PRIMARY KEY,
    amount      numeric NOT NULL,
    outcome     text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION payments.take_payment(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    amount  numeric := (e.data->>'amount')::numeric;
    outcome text := CASE WHEN amount <= 1000 THEN 'captured' ELSE 'declined' END;
BEGIN
    -- the answer carries the saga's id on, so the orders service's saga
    -- sees it; the handler's writes and the projection's checkpoint commit
    -- together, so each request is answered exactly once
    PERFORM event_store.append('payment-' || (e.data->>'orderId'),
        jsonb_build_object('type', CASE outcome WHEN 'captured' THEN 'PaymentCaptured'
                                                ELSE 'PaymentDeclined' END,
                           'data', jsonb_build_object('orderId', e.data->>'orderId',
                                                      'amount', amount),
                           'metadata', jsonb_build_object('saga_id', e.metadata->>'saga_id',
                                                          'causationId', e.event_id)));
    INSERT INTO payments.ledger (order_id, amount, outcome)
    VALUES (e.data->>'orderId', amount, outcome);
END $$;

SELECT event_store.create_projection('payment_desk', 'payments.take_payment(event_store.event)',
                                     event_types => ARRAY['PaymentRequested'],
                                     categories => ARRAY['order'], mode => 'async');

SELECT event_store.create_publication('payments_out', ARRAY['payment']);
