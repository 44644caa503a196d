"""The staff page at ``/``: the rental board and projection lag, live.

One server-rendered HTML document with inline CSS and JavaScript (no build
step, no CDN). After signing in with a staff account it loads the board from
``/queries/rental-board`` and the lag from ``/admin/projections``, then opens
an ``EventSource`` on ``/events`` and re-fetches both whenever an event
arrives, asking the board for read-your-writes (``min_position`` = the event's
position) so the row it shows already reflects the event.

Element ids are stable; the README lists them.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Rental board</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
  h1 { font-size: 1.3rem; margin: 0 0 1rem; }
  h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; }
  th { background: #f4f4f4; }
  .status { font-weight: 600; }
  tr[data-status="overdue"] .status { color: #b00020; }
  tr[data-status="cancelled"] .status { color: #777; }
  tr[data-status="confirmed"] .status, tr[data-status="shipped"] .status { color: #0a6; }
  #feed-state { padding: .1rem .4rem; border-radius: .3rem; background: #eee; }
  #feed-state[data-state="live"] { background: #d7f5e3; }
  #feed-state[data-state="error"] { background: #fde0e0; }
  #login-error { color: #b00020; min-height: 1.2em; }
  .hidden { display: none; }
  form label { display: inline-block; margin-right: .8rem; }
</style>
</head>
<body>
<h1>Rental board</h1>

<section id="login-section">
  <form id="login-form">
    <label>E-mail <input id="login-email" name="email" type="email" autocomplete="username"
      required></label>
    <label>Password <input id="login-password" name="password" type="password"
      autocomplete="current-password" required></label>
    <button id="login-submit" type="submit">Sign in</button>
  </form>
  <p id="login-error" role="alert"></p>
</section>

<section id="board-section" class="hidden">
  <p>Feed: <span id="feed-state" data-state="connecting">connecting</span>
     &middot; last event: <span id="last-event">none</span>
     &middot; <span id="board-count">0</span> rentals
     &middot; <button id="logout" type="button">Sign out</button></p>
  <table id="board">
    <thead><tr><th>Rental</th><th>Member</th><th>Status</th><th>Items</th><th>Amount</th>
      <th>Due</th><th>Updated</th></tr></thead>
    <tbody id="board-rows"></tbody>
  </table>
  <h2>Projection lag</h2>
  <table id="projection-lag">
    <thead><tr><th>Read model</th><th>State</th><th>Position</th><th>Head</th><th>Lag</th></tr>
    </thead>
    <tbody id="lag-rows"></tbody>
  </table>
</section>

<script>
"use strict";
const KEY = "rental-service-token";
let token = sessionStorage.getItem(KEY);
let feed = null;
let lastPosition = 0;
let refreshTimer = null;

const $ = (id) => document.getElementById(id);

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text == null ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}

function when(iso) {
  return iso ? new Date(iso).toISOString().replace("T", " ").slice(0, 19) : "";
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (response.status === 401) { signOut("Your session has expired; sign in again."); }
  return response;
}

async function loadBoard() {
  let path = "/queries/rental-board?limit=200";
  if (lastPosition) path += "&min_position=" + lastPosition;
  let response = await api(path);
  if (response.status === 503) response = await api("/queries/rental-board?limit=200");
  if (!response.ok) return;
  const page = await response.json();
  const body = $("board-rows");
  body.replaceChildren();
  for (const rental of page.items) {
    const row = document.createElement("tr");
    row.dataset.rentalId = rental.rental_id;
    row.dataset.status = rental.status;
    cell(row, rental.rental_id);
    cell(row, rental.member_name ? rental.member_name + " <" + rental.member_email + ">" : "");
    cell(row, rental.status.replace("_", " "), "status");
    cell(row, rental.skus.join(", "));
    cell(row, rental.amount ? rental.amount + " yen" : "");
    cell(row, when(rental.due_at));
    cell(row, when(rental.updated_at));
    body.appendChild(row);
  }
  $("board-count").textContent = String(page.items.length);
}

async function loadLag() {
  const response = await api("/admin/projections");
  if (!response.ok) return;
  const body = $("lag-rows");
  body.replaceChildren();
  for (const p of await response.json()) {
    const row = document.createElement("tr");
    row.dataset.projection = p.name;
    cell(row, p.name);
    cell(row, p.error ? p.state + ": " + p.error : p.state, "state");
    cell(row, p.position, "position");
    cell(row, p.head, "head");
    cell(row, p.lag, "lag");
    body.appendChild(row);
  }
}

function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    loadBoard();
    loadLag();
  }, 150);
}

function setFeed(state) {
  $("feed-state").textContent = state;
  $("feed-state").dataset.state = state;
}

function openFeed() {
  if (feed) feed.close();
  const url = "/events?access_token=" + encodeURIComponent(token) +
    (lastPosition ? "&after=" + lastPosition : "");
  feed = new EventSource(url);
  setFeed("connecting");
  feed.onopen = () => setFeed("live");
  feed.onerror = () => setFeed("error");
  feed.onmessage = (message) => {
    lastPosition = Number(message.lastEventId) || lastPosition;
    try {
      const event = JSON.parse(message.data);
      $("last-event").textContent = event.type + " @ " + message.lastEventId;
    } catch (e) { /* a malformed message only skips the label */ }
    setFeed("live");
    refreshSoon();
  };
}

async function start() {
  $("login-section").classList.add("hidden");
  $("board-section").classList.remove("hidden");
  const response = await api("/admin/projections");
  if (!response.ok) return;
  const lag = await response.json();
  lastPosition = lag.reduce((head, p) => Math.max(head, p.head), 0);
  await Promise.all([loadBoard(), loadLag()]);
  openFeed();
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  token = null;
  if (feed) { feed.close(); feed = null; }
  $("board-section").classList.add("hidden");
  $("login-section").classList.remove("hidden");
  $("login-error").textContent = message || "";
}

$("login-form").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  $("login-error").textContent = "";
  const response = await fetch("/auth/token", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: $("login-email").value, password: $("login-password").value }),
  });
  if (!response.ok) { $("login-error").textContent = "Wrong e-mail address or password."; return; }
  const issued = await response.json();
  if (issued.role !== "staff") { $("login-error").textContent = "This page is for staff."; return; }
  token = issued.access_token;
  sessionStorage.setItem(KEY, token);
  start();
});

$("logout").addEventListener("click", () => signOut(""));

if (token) start();
</script>
</body>
</html>
"""


def staff_page_router() -> APIRouter:
    """``GET /``: the staff page."""
    router = APIRouter(tags=["staff page"])

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    return router
