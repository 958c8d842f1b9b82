// Live auction page: follows the auction's server-sent events and updates the figures in
// place. Without JavaScript (or if the stream drops for good) the page still works by reload.
(function () {
  "use strict";
  var panel = document.getElementById("auction");
  if (!panel || !window.EventSource) { return; }
  var currency = panel.getAttribute("data-currency");
  var symbol = currency === "CAD" ? "CA$" : (currency === "USD" ? "$" : currency + " ");
  function money(cents) {
    if (cents === null || cents === undefined) { return "No bids yet"; }
    return symbol + (cents / 100).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }
  function set(field, text) {
    panel.querySelectorAll('[data-field="' + field + '"]').forEach(function (node) { node.textContent = text; });
  }
  var source = new EventSource(panel.getAttribute("data-events"));
  source.addEventListener("auction", function (event) {
    var state = JSON.parse(event.data);
    set("current_price_cents", money(state.current_price_cents));
    set("minimum_bid_cents", money(state.minimum_bid_cents));
    set("bid_count", String(state.bid_count));
    set("reserve_met", state.reserve_met ? "met" : "not met yet");
    var ends = panel.querySelector('[data-field="ends_at"]');
    if (ends) {
      ends.setAttribute("datetime", state.ends_at);
      ends.textContent = state.ends_at.replace("T", " ").slice(0, 19);
    }
    if (state.closed) {
      set("status", "This auction has ended" + (state.outcome ? " (" + state.outcome.replace("_", " ") + ")." : "."));
      var form = panel.querySelector("form");
      if (form) { form.remove(); }
      source.close();
    } else {
      // Who leads is not in the broadcast (everyone gets it); ask for our own standing.
      fetch(panel.getAttribute("data-state"), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (mine) {
          if (!mine) { return; }
          set("places", String(mine.places));
          set("status", mine.leading ? "You lead this auction."
            : mine.winning ? "Your bid holds one of the " + mine.places + " winning places."
            : "Open for bids.");
        })
        .catch(function () { /* the next event tries again */ });
    }
  });
})();
