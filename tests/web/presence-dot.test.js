// What of gateway/web/presence-dot.js runs without a DOM: the label wording (custom status
// included), and that the module loads where there is no `customElements`. The element itself
// is covered by tests/test_browser.py in Chromium.

import assert from "node:assert/strict";
import { test } from "node:test";

import { customOf, describePresence, platformName, timeAgo, usePresence } from "../../gateway/web/presence-dot.js";

const NOW = 1_763_700_000_000;
/** @param {object} fields */
const state = (fields) =>
  /** @type {import("../../gateway/web/presence.js").PresenceState} */ ({
    user: "bob",
    status: "online",
    since: NOW,
    devices: [],
    custom: null,
    v: 1,
    ...fields,
  });

test("the label of an online user with a custom status ends with it after a colon", () => {
  assert.equal(describePresence("Bob", state({ custom: "In a meeting" }), NOW), "Bob is online: In a meeting");
});

test("the label without a custom status is unchanged", () => {
  assert.equal(describePresence("bob", state({}), NOW), "bob is online");
  assert.equal(describePresence("bob", state({ status: "offline", since: null }), NOW), "bob was never seen");
  assert.equal(
    describePresence("bob", state({ status: "offline", since: NOW - 5 * 60_000 }), NOW),
    "bob was last seen 5 minutes ago",
  );
  assert.equal(describePresence("bob", undefined, NOW), "bob's status is unknown");
});

test("an offline user's custom status is in the label too", () => {
  assert.equal(
    describePresence("bob", state({ status: "offline", since: NOW - 3_600_000, custom: "On leave" }), NOW),
    "bob was last seen 1 hour ago: On leave",
  );
});

test("customOf reads null for a missing or empty custom status", () => {
  assert.equal(customOf(state({ custom: "Busy" })), "Busy");
  assert.equal(customOf(state({ custom: "" })), null);
  assert.equal(customOf(/** @type {any} */ ({ user: "old", status: "online" })), null);
  assert.equal(customOf(undefined), null);
});

test("timeAgo and platformName word times and platforms in English", () => {
  assert.equal(timeAgo(NOW, NOW + 10_000), "just now");
  assert.equal(timeAgo(NOW, NOW + 2 * 24 * 3_600_000), "2 days ago");
  assert.equal(platformName("mac"), "macOS");
  assert.equal(platformName("beos"), "beos");
});

test("usePresence refuses what is not a client and accepts null", () => {
  assert.throws(() => usePresence(/** @type {any} */ ({})), TypeError);
  assert.equal(usePresence(null), null);
});
