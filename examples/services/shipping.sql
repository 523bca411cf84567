-- The shipping service: owns category "shipment", imports "order".  An async
-- projection dispatches a parcel for every ShipmentRequested.
CREATE EXTENSION IF NOT EXISTS event_store;
CREATE SCHEMA shipping;

CREATE TABLE shipping.dispatches (
    order_id      text PRIMARY KEY,
    customer      text NOT NULL,
    dispatched_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION shipping.dispatch(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.append('shipment-' || (e.data->>'orderId'),
        jsonb_build_object('type', 'ShipmentDispatched',
                           'data', jsonb_build_object('orderId', e.data->>'orderId',
                                                      'customer', e.data->>'customer'),
                           'metadata', jsonb_build_object('saga_id', e.metadata->>'saga_id',
                                                          'causationId', e.event_id)));
    INSERT INTO shipping.dispatches (order_id, customer)
    VALUES (e.data->>'orderId', e.data->>'customer');
END $$;

SELECT event_store.create_projection('dispatcher', 'shipping.dispatch(event_store.event)',
                                     event_types => ARRAY['ShipmentRequested'],
                                     categories => ARRAY['order'], mode => 'async');

SELECT event_store.create_publication('shipping_out', ARRAY['shipment']);
