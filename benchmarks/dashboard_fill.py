"""A history database with a million instances in it, for the dashboard benchmark.

Written with a few ``INSERT ... SELECT`` over ``generate_series`` (no row crosses into
Python): mixed statuses, workflows and times over 30 days, ids as the engine
makes them (random, like uuid4().hex), business keys on most orders, errors with tracebacks on the
failed ones. The instances' secondary indexes are dropped for the load and rebuilt
after it (faster than keeping them up to date row by row), then ``VACUUM ANALYZE``
does what autovacuum would do to a table that grew this big.
"""

from __future__ import annotations

import sqlalchemy as sa

# Shares of all instances, in the order the buckets are cut from one random number.
STATUS_SHARES = [
    ("completed", 0.85),
    ("failed", 0.05),
    ("running", 0.03),
    ("waiting_for_event", 0.02),
    ("waiting_for_timer", 0.015),
    ("cancelled", 0.015),
    ("pending", 0.01),
    ("compensating", 0.005),
    ("compensation_failed", 0.003),
    ("compensated", 0.002),
]
WORKFLOW_SHARES = [
    ("order_processing", 0.5),
    ("payment", 0.2),
    ("shipping", 0.15),
    ("user_onboarding", 0.1),
    ("nightly_report", 0.05),
]
DAYS = 30
# Orders with an ``order_id`` business key (the rest were started without one), and
# orders that also carry a ``customer`` key.
KEYED_ORDERS = 0.8
CUSTOMER_KEYS = 0.25

TRACEBACK = "\n".join(
    ["Traceback (most recent call last):"]
    + [
        f'  File "/srv/shop/shop/activities.py", line {40 + i}, in step_{i}\n    x = call()'
        for i in range(12)
    ]
    + ["example_project.shop.ShippingError: carrier refused the parcel"]
)


def buckets(column: str, shares: list[tuple[str, float]]) -> str:
    """A SQL CASE that maps a uniform random ``column`` in [0, 1) onto the shares."""
    cases, bound = [], 0.0
    for name, share in shares[:-1]:
        bound += share
        cases.append(f"WHEN {column} < {bound:.6f} THEN '{name}'")
    return f"CASE {' '.join(cases)} ELSE '{shares[-1][0]}' END"


SEED = """
CREATE TEMP TABLE seed AS
SELECT g,
       md5('bench' || g) AS instance_id,
       random() AS s, random() AS w, random() AS k, random() AS j
FROM generate_series(1, :n) AS g
"""

INSTANCES = f"""
INSERT INTO romancy_instances (
    instance_id, workflow_name, status, input_data, output_data, error, version,
    cancel_reason, created_at, updated_at, workflow_version
)
SELECT instance_id, workflow_name, status,
       json_build_object('order_id', 'ORD-' || g, 'amount', '109.97',
                         'customer_email', 'customer' || (g % 50000) || '@example.com'),
       CASE WHEN status = 'completed'
            THEN json_build_object('total', '109.97', 'tracking', 'TRACK-ORD-' || g) END,
       CASE WHEN status IN ('failed', 'compensation_failed', 'compensated')
            THEN json_build_object(
                'type', 'example_project.shop.ShippingError',
                'message', 'carrier refused the parcel for ORD-' || g,
                'step', 'ship_order:1', 'traceback', :traceback) END,
       3 + (g % 4),
       CASE WHEN status = 'cancelled' THEN 'customer asked' END,
       created_at,
       created_at + make_interval(secs => 0.2 + j * 30),
       CASE WHEN j < 0.3 THEN 'v2' END
FROM (
    SELECT seed.*,
           {buckets("s", STATUS_SHARES)} AS status,
           {buckets("w", WORKFLOW_SHARES)} AS workflow_name,
           -- spread evenly over the days, newest for g = 1, with jitter so that some
           -- neighbours share a created_at (the keyset's tie-break on instance_id)
           (now() AT TIME ZONE 'utc')
               - make_interval(secs => (g + floor(j * 3)) * :spacing) AS created_at
    FROM seed
) AS rows
"""

SEARCH = """
INSERT INTO romancy_search (instance_id, key, value)
SELECT instance_id, 'order_id', 'ORD-' || g FROM seed
WHERE w < :orders AND k < :keyed
UNION ALL
SELECT instance_id, 'customer', 'customer' || (g % 50000) FROM seed
WHERE w < :orders AND k < :customers
"""

SECONDARY_INDEXES = """
SELECT indexdef, indexname FROM pg_indexes
WHERE tablename IN ('romancy_instances', 'romancy_search')
  AND indexname NOT IN (
      SELECT conname FROM pg_constraint WHERE conrelid IN (
          'romancy_instances'::regclass, 'romancy_search'::regclass))
"""


def fill(engine: sa.Engine, instances: int) -> dict[str, int]:
    """Insert ``instances`` instances and their business keys; returns rows per table."""
    with engine.begin() as conn:
        indexes = [
            (row.indexdef, row.indexname) for row in conn.execute(sa.text(SECONDARY_INDEXES))
        ]
        for _, name in indexes:
            conn.execute(sa.text(f'DROP INDEX "{name}"'))
        conn.execute(sa.text("SELECT setseed(0.42)"))
        conn.execute(sa.text(SEED), {"n": instances})
        conn.execute(
            sa.text(INSTANCES),
            {"traceback": TRACEBACK, "spacing": DAYS * 86400 / instances},
        )
        orders = dict(WORKFLOW_SHARES)["order_processing"]
        conn.execute(
            sa.text(SEARCH),
            {"orders": orders, "keyed": KEYED_ORDERS, "customers": CUSTOMER_KEYS},
        )
        conn.execute(sa.text("SET maintenance_work_mem = '256MB'"))
        for definition, _ in indexes:
            conn.execute(sa.text(definition))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE romancy_instances"))
        conn.execute(sa.text("VACUUM ANALYZE romancy_search"))
        return {
            table: int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("romancy_instances", "romancy_search")
        }
