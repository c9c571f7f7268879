// tilpheno review, every page: "Log out" forgets the drafts this user kept in this browser.
// review.js keeps a draft in localStorage ("tilpheno-draft|<user>|<product>") so that an expired
// session loses nothing; an explicit logout says the user is done at this browser, so they go
// (another user's kept drafts stay). The logout is also marked ("tilpheno-logout|<user>": its time,
// ms since the epoch), so that a product page of that user still open in another tab, loaded before
// it, keeps no draft again at its next edit (review.js asks tilphenoSession.loggedOutSince).
"use strict";
window.tilphenoSession = {
  // true when ``user`` logged out at this browser at or after ``since`` (ms since the epoch)
  loggedOutSince(user, since) {
    try { return Number(localStorage.getItem("tilpheno-logout|" + user) || 0) >= since; }
    catch (e) { console.warn("the logout mark could not be read: " + e); return false; }
  },
};
(function () {
  for (const form of document.querySelectorAll("form[data-logout-user]")) {
    form.addEventListener("submit", () => {
      const user = form.dataset.logoutUser, prefix = "tilpheno-draft|" + user + "|";
      try {
        localStorage.setItem("tilpheno-logout|" + user, String(Date.now()));
        for (let i = localStorage.length - 1; i >= 0; i--) {
          const k = localStorage.key(i);
          if (k !== null && k.startsWith(prefix)) localStorage.removeItem(k);
        }
      } catch (e) { console.warn("the drafts kept in this browser could not be removed: " + e); }
    });
  }
})();
