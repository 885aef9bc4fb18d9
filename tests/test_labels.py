"""Records named: a foreign-key value by the label of the row it points at, looked up for a
whole page at once (two queries, however many values), and only where the reader may look."""

from __future__ import annotations

from psycopg import sql

from sidecar.capture import labels
from sidecar.text import describe
from tests.fix_sidecar import track


def _schema(sc) -> None:
    sc.execute("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL)")
    sc.execute("CREATE TABLE tickets (id int PRIMARY KEY, customer_id int REFERENCES customers, subject text)")
    sc.execute("INSERT INTO customers SELECT g, 'Customer ' || g FROM generate_series(1, 40) g")
    track(sc, "customers", label_column="name")
    track(sc, "tickets")


def test_a_page_of_values_is_named_in_two_queries(sc):
    _schema(sc)
    images = [("public.tickets", {"id": n, "customer_id": n, "subject": f"Ticket {n}"}) for n in range(1, 41)]
    queries = []
    execute = sc.execute

    def counting(query, *args, **kwargs):
        queries.append(query)
        return execute(query, *args, **kwargs)

    sc.execute = counting
    try:
        found = labels.lookup(sc, images)
    finally:
        del sc.execute
    assert len(queries) == 2
    assert found.named("public.tickets", "customer_id", 7) == "customer Customer 7 (#7)"
    assert found.named("public.tickets", "customer_id", 99) is None  # no such customer: the id stays
    assert found.named("public.tickets", "subject", "x") is None  # not a foreign key
    # The ticket by its own label (a column called subject), with its key.
    assert describe.row_name("public.tickets", {"id": 7}, images[6][1], found) == 'tickets "Ticket 7" (#7)'
    assert describe.named_value("public.tickets", "customer_id", 7, found) == "customer Customer 7 (#7)"
    assert describe.human("2026-12-01T06:38:00+00:00") == "2026-12-01 06:38 UTC"


def test_a_reader_who_may_not_read_the_referenced_table_sees_the_id(sc, make_conn, dsn):
    _schema(sc)
    sc.execute("CREATE ROLE labels_viewer LOGIN")
    sc.execute(sql.SQL("GRANT sidecar_viewer TO labels_viewer"))
    try:
        viewer = make_conn(user="labels_viewer")
        found = labels.lookup(viewer, [("public.tickets", {"id": 1, "customer_id": 1, "subject": "x"})])
        assert found.named("public.tickets", "customer_id", 1) is None
        assert describe.named_value("public.tickets", "customer_id", 1, found) == "1"
    finally:
        sc.execute("DROP OWNED BY labels_viewer")
        sc.execute("DROP ROLE labels_viewer")
