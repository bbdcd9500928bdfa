"""Mailboxes in the store: delivery, UIDs, quotas, deletion and expiry."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailkeep.store import mailboxes as mb
from mailkeep.store.accounts import Conflict, NotFound
from mailkeep.store.db import connect, create_schema
from mailkeep.store.queue import NewMessage, enqueue, new_queue_id, remove_finished


@pytest.fixture
def conn(tmp_path: Path):
    path = tmp_path / "store.sqlite3"
    create_schema(path)
    conn = connect(path)
    conn.execute("INSERT INTO account (name, password_hash, shared_secret, enabled, created)"
                 " VALUES ('acme', '', '', 1, 0), ('other', '', '', 1, 0)")
    conn.execute("INSERT INTO domain (name, account_id, mode, host, port, retention_days, created)"
                 " VALUES ('pop.test', 1, 'pop3', '', 25, 30, 0),"
                 " ('push.test', 1, 'smtp', 'h', 25, 30, 0)")
    mb.add_mailbox(conn, "Bob@Pop.Test", "acme", "hash")
    mb.add_mailbox(conn, "@pop.test", "acme", "hash")
    yield conn
    conn.close()


def deliver(conn, *targets: tuple[str, str], recipients=(), data=b"Subject: x\r\n\r\nbody\r\n",
            arrived: float | None = None) -> int:
    boxes = []
    for mailbox, recipient in targets:
        local, _, domain = recipient.rpartition("@")
        target = mb.find_target(conn, local, domain)
        assert target is not None
        assert target.address == mailbox
        boxes.append((target.mailbox_id, recipient))
    message = NewMessage(queue_id=new_queue_id(), sender="a@x.example", data=data,
                         recipients=list(recipients), mailboxes=boxes)
    if arrived is not None:
        message.arrived = arrived
    return enqueue(conn, message)


def box(conn, address: str) -> int:
    return conn.execute("SELECT id FROM mailbox WHERE address = ?", (address,)).fetchone()[0]


class TestAddresses:
    def test_address__is_lowercased_and_catch_all_kept(self):
        assert mb.parse_mailbox_address("Bob@Pop.Test.") == ("bob@pop.test", "pop.test")
        assert mb.parse_mailbox_address("@pop.test") == ("@pop.test", "pop.test")

    @pytest.mark.parametrize("text", ["bob", "bob@", "a b@pop.test", "<a>@pop.test", "@nodot"])
    def test_invalid_address__is_refused(self, text):
        with pytest.raises(Conflict):
            mb.parse_mailbox_address(text)

    def test_mailbox_for_unknown_domain_or_foreign_account__is_refused(self, conn):
        with pytest.raises(NotFound):
            mb.add_mailbox(conn, "x@nowhere.test", "acme", "h")
        with pytest.raises(Conflict):
            mb.add_mailbox(conn, "x@pop.test", "other", "h")
        with pytest.raises(Conflict):
            mb.add_mailbox(conn, "BOB@pop.test", "acme", "h")


class TestDelivery:
    def test_own_mailbox_wins_over_catch_all(self, conn):
        assert mb.find_target(conn, "BOB", "pop.test").address == "bob@pop.test"
        assert mb.find_target(conn, "carol", "pop.test").address == "@pop.test"

    def test_domain_without_catch_all__has_no_target_for_unknown_address(self, conn):
        mb.remove_mailbox(conn, "@pop.test")
        assert mb.find_target(conn, "carol", "pop.test") is None

    def test_message_for_several_mailboxes__is_stored_once(self, conn):
        mid = deliver(conn, ("bob@pop.test", "bob@pop.test"), ("@pop.test", "carol@pop.test"),
                      ("@pop.test", "dave@pop.test"))
        assert conn.execute("SELECT COUNT(*) FROM message").fetchone()[0] == 1
        rows = conn.execute("SELECT recipient FROM mailbox_entry WHERE message_id = ?"
                            " ORDER BY id", (mid,)).fetchall()
        assert [r[0] for r in rows] == ["bob@pop.test", "carol@pop.test", "dave@pop.test"]

    def test_entry_size__is_the_exact_retrieved_size(self, conn):
        deliver(conn, ("bob@pop.test", "bob@pop.test"), data=b"A: 1\r\n\r\nno final line end")
        listing = mb.listing(conn, box(conn, "bob@pop.test"))
        [data] = mb.load_messages(conn, list(listing.entry_ids)).values()
        assert listing.sizes[0] == len(data)
        assert data.endswith(b"end\r\n")

    def test_uids__grow_and_are_never_reused_after_deletion(self, conn):
        bob = box(conn, "bob@pop.test")
        for _ in range(3):
            deliver(conn, ("bob@pop.test", "bob@pop.test"))
        first = mb.listing(conn, bob)
        mb.delete_entries(conn, bob, list(first.entry_ids))
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        assert list(first.uids) == [1, 2, 3]
        assert list(mb.listing(conn, bob).uids) == [4]

    def test_quota__marks_mailbox_full_at_its_limit(self, conn):
        mb.set_quota(conn, "bob@pop.test", 2, None)
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        assert not mb.find_target(conn, "bob", "pop.test").full
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        assert mb.find_target(conn, "bob", "pop.test").full

    def test_account_quota__marks_every_mailbox_of_the_account_full(self, conn):
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        size = mb.account_usage(conn, "acme")[1]
        mb.set_account_quota(conn, "acme", None, size)
        assert mb.find_target(conn, "carol", "pop.test").full
        mb.set_account_quota(conn, "acme", None, 0)
        assert not mb.find_target(conn, "carol", "pop.test").full


class TestDeletion:
    def test_delete_entries__keeps_message_while_another_mailbox_holds_it(self, conn):
        mid = deliver(conn, ("bob@pop.test", "bob@pop.test"), ("@pop.test", "carol@pop.test"))
        bob = box(conn, "bob@pop.test")
        count, size = mb.delete_entries(conn, bob, list(mb.listing(conn, bob).entry_ids))
        assert count == 1
        assert size > 0
        assert conn.execute("SELECT 1 FROM message WHERE id = ?", (mid,)).fetchone()
        catch_all = box(conn, "@pop.test")
        mb.delete_entries(conn, catch_all, list(mb.listing(conn, catch_all).entry_ids))
        assert not conn.execute("SELECT 1 FROM message WHERE id = ?", (mid,)).fetchone()
        assert conn.execute("SELECT messages, bytes FROM mailbox").fetchall() == [(0, 0), (0, 0)]

    def test_queue_cleanup__keeps_message_still_in_a_mailbox(self, conn):
        mid = deliver(conn, ("bob@pop.test", "bob@pop.test"),
                      recipients=[("x@push.test", "push.test", "queued")])
        conn.execute("DELETE FROM recipient WHERE message_id = ?", (mid,))
        assert remove_finished(conn, [mid]) == []
        assert mb.load_messages(conn, list(mb.listing(conn, box(conn, "bob@pop.test")).entry_ids))

    def test_expire__removes_old_entries_and_skips_open_mailboxes(self, conn):
        old = time.time() - 40 * 86400
        deliver(conn, ("bob@pop.test", "bob@pop.test"), arrived=old)
        deliver(conn, ("@pop.test", "carol@pop.test"), arrived=old)
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        cutoff = time.time() - 30 * 86400
        bob = box(conn, "bob@pop.test")
        assert len(mb.listing(conn, bob, cutoff)) == 1
        assert mb.expire(conn, "pop.test", cutoff, frozenset({box(conn, "@pop.test")})) == [
            ("bob@pop.test", 1)]
        assert len(mb.listing(conn, bob)) == 1

    def test_remove_mailbox_with_mail__needs_force(self, conn):
        deliver(conn, ("bob@pop.test", "bob@pop.test"))
        with pytest.raises(Conflict):
            mb.remove_mailbox(conn, "bob@pop.test")
        assert mb.remove_mailbox(conn, "bob@pop.test", force=True) == ("bob@pop.test", 1)
        assert conn.execute("SELECT COUNT(*) FROM message").fetchone()[0] == 0


class TestFilingHeldMail:
    def test_held_recipient_of_pop3_domain__moves_into_its_mailbox(self, conn):
        enqueue(conn, NewMessage(queue_id="Q1", sender="", data=b"Subject: dsn\r\n\r\nx\r\n",
                                 recipients=[("carol@pop.test", "pop.test", "held")]))
        assert mb.file_held(conn) == [("Q1", "carol@pop.test", "@pop.test")]
        assert conn.execute("SELECT COUNT(*) FROM recipient").fetchone()[0] == 0
        assert len(mb.listing(conn, box(conn, "@pop.test"))) == 1


class TestListingSpeed:
    def test_listing_query__uses_only_the_covering_index(self, conn):
        plan = " ".join(row[3] for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT id, uid, size FROM mailbox_entry INDEXED BY"
            " ix_mailbox_entry_listing WHERE mailbox_id = 1 AND arrived >= 0 ORDER BY uid"))
        assert "COVERING INDEX ix_mailbox_entry_listing" in plan
