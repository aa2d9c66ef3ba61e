"""The journey of the CRM add-on in a real browser, as a new organization would live it.

Chromium drives the real app (served in a thread) through its pages only: an admin adds a user
with a one-time password; the user replaces it, adds a POP account on the real Dovecot, makes
it the CRM add-on account and creates a lead. Mail from the lead arrives by "Fetch now" and
shows on the lead's page as received; a note added from the message view lands on the lead
with a link back; the reply goes out through a real aiosmtpd relay and shows as sent.

Jobs run in this thread with the project's own burst worker, between browser steps, so each
step sees exactly what the previous one queued. The few things done without the browser are
setup done elsewhere: the mail in the external mailbox, and the organization's relay (the
test aiosmtpd, which also carries the Send Mail As confirmation link the user then opens).
"""
from __future__ import annotations

import re
from email import message_from_bytes, policy

import pytest

from tests.factories import PASSWORD
from tests.fixtures.browser import serve_wsgi
from webapp.extensions import db
from webapp.services import outbox
from worker.runner import run_worker

pytestmark = pytest.mark.browser

NEW_USER = "sam@acme.example"
NEW_PASSWORD = "Journey-to-the-lead-2026"
LEAD_NAME = "Lena Lead"
LEAD_EMAIL = "lead@customer.example"
SUBJECT = "Quote for 40 seats"
ORIGINAL_ID = "<quote-40-seats@customer.example>"
NOTE_TITLE = "Wants a quote by Friday"
EXPECT_TIMEOUT_MS = 15_000


def lead_mail(to: str) -> bytes:
    """The lead's first message to the user's POP address."""
    return (f"From: {LEAD_NAME} <{LEAD_EMAIL}>\r\nTo: {to}\r\nSubject: {SUBJECT}\r\n"
            f"Date: Sun, 29 Nov 2026 09:30:00 +0000\r\nMessage-ID: {ORIGINAL_ID}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Hello, could you send us a quote for 40 seats?\r\n").encode()


def run_jobs(app) -> None:
    """Run every queued job (fetch, default, send) to the end, in this thread."""
    db.session.rollback()  # end this thread's transaction: the jobs and pages write meanwhile
    run_worker(app, ["fetch", "default", "send"], burst=True, with_scheduler=False,
               name="journey-worker")


def log_in(page, base: str, email: str, password: str) -> None:
    """Log in through the login form."""
    page.goto(f"{base}/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state("load")


def flash(page):
    """The flash messages of the page."""
    return page.locator(".flashes")


@pytest.fixture
def patient_expect():
    """Playwright's expect, waiting up to 15 s: pages that talk to POP servers are slow."""
    from playwright.sync_api import expect

    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    try:
        yield expect
    finally:
        expect.set_options(timeout=None)  # back to Playwright's default for the other tests


def test_journey_from_a_new_user_to_a_tracked_conversation(app, admin_user, browser_context,
                                                            dovecot, pop_user, smtp_server,
                                                            patient_expect, tmp_path):
    expect = patient_expect
    app.config["MAIL_CA_BUNDLE"] = dovecot.ca_bundle
    app.config["POP_TIMEOUT_SECONDS"] = 10.0
    relay = smtp_server()
    outbox.save_relay(db.session, admin_user.org_id, host=relay.host, port=relay.port,
                      security="none", username="", password=None, envelope_policy="hosted",
                      envelope_sender="", daily_limit_user=500, daily_limit_org=5000)
    db.session.commit()
    pop_name, pop_password = pop_user
    pop_email = f"{pop_name}@pop.example"
    page = browser_context.new_page()
    # A script error or a CSP violation (the browser reports both on its console) is a broken
    # page even when the step around it still works.
    page_errors: list[str] = []
    page.on("console", lambda m: page_errors.append(f"{page.url}: {m.text}") if m.type == "error"
            else None)
    page.on("pageerror", lambda error: page_errors.append(f"{page.url}: {error}"))

    with serve_wsgi(app) as base:
        # 1. The admin adds a user with a one-time password.
        log_in(page, base, admin_user.email, PASSWORD)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Admin").click()
        page.get_by_role("navigation", name="Admin").get_by_role("link", name="Users").click()
        page.get_by_role("link", name="Add user").click()
        page.get_by_label("Email address").fill(NEW_USER)
        page.get_by_label("Display name").fill("Sam Seller")
        page.get_by_label("One-time password (the user must change it at first login)").check()
        page.get_by_role("button", name="Add user").click()
        expect(page.get_by_role("heading", name=f"{NEW_USER} was added")).to_be_visible()
        one_time = page.get_by_label("One-time password", exact=True).input_value()
        assert len(one_time) >= 10
        page.get_by_role("button", name="Log out").click()
        expect(page.get_by_role("heading", name="Log in to SkyDesk Mail")).to_be_visible()

        # … and the user must replace it at first login.
        log_in(page, base, NEW_USER, one_time)
        expect(page).to_have_url(re.compile(r"/settings/password$"))
        page.get_by_label("Current password").fill(one_time)
        page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        page.get_by_label("Repeat the new password").fill(NEW_PASSWORD)
        page.get_by_role("button", name="Change password").click()
        expect(flash(page)).to_contain_text("Your password was changed")
        page.goto(f"{base}/crm/")
        expect(page).to_have_url(re.compile(r"/crm/$"))  # no longer sent back to the password page

        # 2. A POP account on the real Dovecot (POP3S, test CA) …
        page.goto(f"{base}/settings/accounts")
        page.get_by_role("link", name="Add a POP account").click()
        page.get_by_label("Email address").fill(pop_email)
        page.get_by_label("POP server").fill(dovecot.host)
        page.get_by_label("Port").fill(str(dovecot.pop3s_port))
        page.get_by_label("Security").select_option("ssl")
        page.get_by_label("Username").fill(pop_name)
        page.get_by_label("Password", exact=True).fill(pop_password)
        page.get_by_role("button", name="Save and test the connection").click()
        expect(flash(page)).to_contain_text("Saved.")
        expect(page.locator(".flash-error")).to_have_count(0)
        pop_row = page.locator("tr", has_text=pop_email)
        expect(pop_row).to_be_visible()
        run_jobs(app)  # the first fetch that saving started: the mailbox is still empty

        # … chosen as the account feeding the CRM.
        page.goto(f"{base}/settings")
        page.get_by_role("link", name="Add-on accounts", exact=True).click()
        page.get_by_label("CRM reads mail from").select_option(label=f"{pop_email} (POP)")
        page.get_by_role("button", name="Save").click()
        expect(flash(page)).to_contain_text("Add-on accounts saved")
        expect(page.get_by_label("CRM reads mail from").locator("option:checked")).to_have_text(
            f"{pop_email} (POP)")

        # … and a Send Mail As address, confirmed by the link the relay carried to it, so
        # replies go out From the POP address and are filed in that account's Sent.
        page.goto(f"{base}/settings/sendas")
        page.get_by_label("Address", exact=True).fill(pop_email)
        page.get_by_role("button", name="Add and send the code").click()
        expect(flash(page)).to_contain_text(f"A confirmation code was sent to {pop_email}")
        run_jobs(app)
        assert [m.rcpt_tos for m in relay.messages] == [[pop_email]]
        confirmation = message_from_bytes(relay.messages[0].data, policy=policy.default)
        link = re.search(r"https?://\S+/confirm/\S+", confirmation.get_body().get_content())
        assert link, confirmation.get_body().get_content()
        page.goto(link.group(0))
        page.get_by_role("button", name="Confirm").click()
        expect(flash(page)).to_contain_text(f"{pop_email} is confirmed")
        relayed_before_reply = len(relay.messages)

        # 3. The lead, created in the CRM.
        page.get_by_role("navigation", name="Main").get_by_role("link", name="CRM").click()
        page.get_by_role("navigation", name="CRM").get_by_role("link", name="Leads").click()
        page.get_by_role("link", name="New lead").click()
        page.get_by_label("Name").fill(LEAD_NAME)
        page.get_by_label("Email address").fill(LEAD_EMAIL)
        page.get_by_label("Company").fill("Customer Ltd")
        page.get_by_role("button", name="Save lead").click()
        expect(page.get_by_role("heading", name=LEAD_NAME)).to_be_visible()
        lead_url = page.url
        assert re.search(r"/crm/leads/\d+$", lead_url), lead_url

        # 4. Mail from the lead arrives: "Fetch now", then the worker.
        dovecot.seed(pop_name, [lead_mail(pop_email)])
        page.goto(f"{base}/settings/accounts")
        page.locator("tr", has_text=pop_email).get_by_role("button", name="Fetch now").click()
        expect(flash(page)).to_contain_text(f"Fetching {pop_email} now.")
        run_jobs(app)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Mail").click()
        message_link = page.locator(".message-list").get_by_role("link", name=SUBJECT)
        expect(message_link, "the fetched mail is not in the inbox").to_be_visible()
        page.goto(lead_url)
        received = page.locator(".crm-timeline li.crm-mail", has_text=SUBJECT)
        expect(received, "the lead's mail is not on the lead's page").to_have_count(1)
        expect(received.locator(".badge"), "the lead's mail is not marked received").to_have_text(
            "received")
        expect(received).to_contain_text(f"from {LEAD_NAME}")

        # 5. A note from the message view's CRM panel, stored on the lead with a link back.
        received.get_by_role("link", name=SUBJECT).click()
        expect(page.get_by_role("heading", name=SUBJECT, level=1)).to_be_visible()
        message_path = re.sub(r"^https?://[^/]+", "", page.url)
        assert re.fullmatch(r"/mail/message/\d+", message_path), message_path
        panel = page.get_by_role("region", name="CRM")
        card = panel.locator(".crm-card", has=page.get_by_role("link", name=LEAD_NAME))
        expect(card, "the message view has no CRM card for the lead").to_have_count(1)
        card.get_by_text("Add a task, event or note").click()
        expect(card.get_by_label("Kind")).to_have_value("note")
        card.get_by_label("Title").fill(NOTE_TITLE)
        card.get_by_label("Notes").fill("Asked on the phone too.")
        card.get_by_role("button", name="Add").click()
        expect(flash(page)).to_contain_text(f"Note added to {LEAD_NAME}.")
        expect(page).to_have_url(re.compile(re.escape(message_path) + "$"))
        page.goto(lead_url)
        note = page.locator(".crm-timeline li.crm-activity", has_text=NOTE_TITLE)
        expect(note, "the note from the message view is not on the lead").to_have_count(1)
        expect(note.locator(".badge")).to_have_text("note")
        expect(note.get_by_role("link", name="from a message")).to_have_attribute(
            "href", re.compile(re.escape(message_path) + "$"))

        # 6. The reply, from the POP address, through the relay.
        page.goto(f"{base}{message_path}")
        page.get_by_role("toolbar", name="Message actions").get_by_role("link", name="Reply",
                                                                         exact=True).click()
        # Replies go out from the address the original arrived at.
        expect(page.get_by_label("From").locator("option:checked")).to_have_text(pop_email)
        expect(page.get_by_label("To", exact=True)).to_have_value(re.compile(re.escape(LEAD_EMAIL)))
        expect(page.get_by_label("Subject")).to_have_value(f"Re: {SUBJECT}")
        body = page.get_by_label("Message", exact=True)
        body.fill("Dear Lena,\n\nthe quote is attached to this reply in spirit.\n\n"
                  + body.input_value())
        page.get_by_role("button", name="Send", exact=True).click()
        expect(flash(page)).to_contain_text("Your message is on its way (1 recipient)")
        run_jobs(app)
        assert len(relay.messages) == relayed_before_reply + 1
        reply = relay.messages[-1]
        assert reply.rcpt_tos == [LEAD_EMAIL]
        assert f"In-Reply-To: {ORIGINAL_ID}".encode() in reply.data
        assert re.search(rb"^From: .*" + re.escape(pop_email.encode()), reply.data, re.M | re.I)

        page.goto(lead_url)
        sent = page.locator(".crm-timeline li.crm-mail", has_text=f"Re: {SUBJECT}")
        expect(sent, "the reply is not on the lead's page").to_have_count(1)
        expect(sent.locator(".badge"), "the reply is not marked sent").to_have_text("sent")
        expect(sent).to_contain_text("in Sent")
        expect(page.locator(".crm-timeline li.crm-mail.crm-received")).to_have_count(1)

        # 7. The lead's page as the user sees it (look at it when changing this journey).
        page.screenshot(path=str(tmp_path / "lead-page.png"), full_page=True)
    assert page_errors == []
