-- Programs (docs/operations.md, "Programs"): every customer belongs to one
-- client card program, the program of its first applied event; an event for
-- the customer under another program is parked (`program_conflict`) and
-- changes nothing. Customers recorded before programs existed belong to
-- `default`, the one program of a deployment without a programs file. A
-- constant default: adding the column rewrites nothing.
ALTER TABLE customers ADD COLUMN program_id text NOT NULL DEFAULT 'default';

-- A program's customer listings, in the listing's order.
CREATE INDEX customers_by_program ON customers (program_id, updated_at, customer_id);
