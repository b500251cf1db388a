// raftcron dashboard: refreshes each page's live part every 2 s without a full reload,
// and shows times in the browser's zone (UTC stays on hover), except a schedule's fire
// times, which the server writes in the schedule's own zone. The pages work without it.
"use strict";

function localizeTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]:not([data-zoned])")) {
    const d = new Date(t.getAttribute("datetime"));
    if (!isNaN(d)) {
      t.textContent = d.toLocaleString();
    }
  }
}

async function refresh(live, stale) {
  if (document.hidden) {
    return;
  }
  try {
    const resp = await fetch(window.location.href, {
      headers: { "X-Raftcron-Live": "1" },
      credentials: "same-origin",
      cache: "no-store",
    });
    if (resp.status === 401) {
      window.location.assign("/ui/login");
      return;
    }
    if (!resp.ok) {
      throw new Error("HTTP " + resp.status);
    }
    const html = await resp.text();
    // Server-rendered and escaped; the CSP runs no inline script in it either.
    live.innerHTML = html;
    localizeTimes(live);
    stale.hidden = true;
  } catch (e) {
    stale.hidden = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  localizeTimes(document);
  const live = document.getElementById("live");
  const stale = document.getElementById("stale");
  if (live && stale && live.dataset.live === "on" && live.childElementCount > 0) {
    let busy = false;
    window.setInterval(async () => {
      if (busy) {
        return;
      }
      busy = true;
      await refresh(live, stale);
      busy = false;
    }, 2000);
  }
});
