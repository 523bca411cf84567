-- The orders service: owns category "order", imports "payment" and "shipment".
-- Its read model order_summary follows all three; the saga order_fulfilment
-- asks payments for the money and shipping for the parcel, and cancels the
-- order when the payment is declined.
CREATE EXTENSION IF NOT EXISTS event_store;
CREATE SCHEMA orders;

-- ---- the read model ---------------------------------------------------------
CREATE TABLE orders.order_summary (
    order_id   text PRIMARY KEY,
    customer   text,
    amount     numeric,
    status     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- order-1001, payment-1001, shipment-1001: the order is what follows the "-"
CREATE FUNCTION orders.order_of(stream_id text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT
RETURN substr(stream_id, strpos(stream_id, '-') + 1);

CREATE FUNCTION orders.track(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'OrderPlaced' THEN
        INSERT INTO orders.order_summary (order_id, customer, amount, status)
        VALUES (orders.order_of(e.stream_id), e.data->>'customer',
                (e.data->>'amount')::numeric, 'placed');
        RETURN;
    END IF;
    UPDATE orders.order_summary
       SET status = CASE e.event_type
                        WHEN 'PaymentRequested' THEN 'awaiting payment'
                        WHEN 'PaymentCaptured' THEN 'paid'
                        WHEN 'PaymentDeclined' THEN 'payment declined'
                        WHEN 'ShipmentRequested' THEN 'awaiting shipment'
                        WHEN 'ShipmentDispatched' THEN 'shipped'
                        WHEN 'OrderCancelled' THEN 'cancelled'
                        ELSE status
                    END,
           updated_at = now()
     WHERE order_id = orders.order_of(e.stream_id);
END $$;

-- inline: kept in the same transaction as each event, local or imported
SELECT event_store.create_projection('order_summary', 'orders.track(event_store.event)',
                                     categories => ARRAY['order', 'payment', 'shipment']);

-- ---- the saga -----------------------------------------------------------------
-- Local steps: (saga_id uuid, data jsonb) RETURNS jsonb.  What a step returns
-- is merged into the saga's data and is all its compensation receives.
CREATE FUNCTION orders.request_payment(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    -- "saga_id" in the metadata lets the answer, from the payments service's
    -- database, complete this saga's waiting step
    PERFORM event_store.append('order-' || (data->>'orderId'),
        jsonb_build_object('type', 'PaymentRequested',
                           'data', jsonb_build_object('orderId', data->>'orderId',
                                                      'amount', data->'amount'),
                           'metadata', jsonb_build_object('saga_id', saga_id)));
    RETURN jsonb_build_object('orderId', data->>'orderId', 'amount', data->'amount');
END $$;

CREATE FUNCTION orders.cancel_order(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.append('order-' || (data->>'orderId'),
        jsonb_build_object('type', 'OrderCancelled',
                           'data', jsonb_build_object('orderId', data->>'orderId',
                                                      'reason', 'payment declined'),
                           'metadata', jsonb_build_object('saga_id', saga_id)));
    RETURN NULL;
END $$;

CREATE FUNCTION orders.request_shipment(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.append('order-' || (data->>'orderId'),
        jsonb_build_object('type', 'ShipmentRequested',
                           'data', jsonb_build_object('orderId', data->>'orderId',
                                                      'customer', data->>'customer'),
                           'metadata', jsonb_build_object('saga_id', saga_id)));
    RETURN NULL;
END $$;

SELECT event_store.define_saga('order_fulfilment', '{
  "steps": [
    {"name": "request_payment", "action": "orders.request_payment",
     "compensation": "orders.cancel_order"},
    {"name": "payment", "complete_on": "PaymentCaptured", "fail_on": "PaymentDeclined",
     "timeout": "2 minutes"},
    {"name": "request_shipment", "action": "orders.request_shipment"},
    {"name": "shipment", "complete_on": "ShipmentDispatched", "timeout": "2 minutes"}
  ],
  "timeout": "10 minutes"}');

-- Placing an order: the event and the saga in one transaction
CREATE FUNCTION orders.place_order(order_id text, customer text, amount numeric)
RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.append('order-' || order_id,
        jsonb_build_object('type', 'OrderPlaced',
                           'data', jsonb_build_object('orderId', order_id,
                                                      'customer', customer,
                                                      'amount', amount)),
        0);
    RETURN event_store.start_saga('order_fulfilment',
        jsonb_build_object('orderId', order_id, 'customer', customer, 'amount', amount));
END $$;

-- ---- what it shares -------------------------------------------------------------
SELECT event_store.create_publication('orders_out', ARRAY['order']);
