// tilpheno review, every page: "Log out" forgets the drafts this user kept in this browser.
// review.js keeps a draft in localStorage ("tilpheno-draft|<user>|<product>") so that an expired
// session loses nothing; an explicit logout says the user is done at this browser, so they go
// (another user's kept drafts stay).
"use strict";
(function () {
  for (const form of document.querySelectorAll("form[data-logout-user]")) {
    form.addEventListener("submit", () => {
      const prefix = "tilpheno-draft|" + form.dataset.logoutUser + "|";
      try {
        for (let i = localStorage.length - 1; i >= 0; i--) {
          const k = localStorage.key(i);
          if (k !== null && k.startsWith(prefix)) localStorage.removeItem(k);
        }
      } catch (e) { console.warn("the drafts kept in this browser could not be removed: " + e); }
    });
  }
})();
