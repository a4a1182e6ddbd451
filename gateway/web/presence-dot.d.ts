// Type declarations for web/presence-dot.js: the <presence-dot> element and usePresence (SPEC §7).

import type { PresenceClient, PresenceState } from "./presence.js";

/** What a dot shows: its user's status, or `unknown` before the first snapshot (or without a client). */
export type PresenceDotStatus = "online" | "offline" | "unknown";

/**
 * The attributes of `<presence-dot>`, e.g. for JSX declarations or templating helpers.
 * Boolean attributes are on when present, whatever their value.
 */
export interface PresenceDotAttributes {
  /** The user id to watch (required). */
  user: string;
  /** Display name used in the accessible label; defaults to `user`. */
  name?: string;
  /** Show an icon per platform the user is online on (`::part(platform)`). */
  "show-platform"?: boolean | "";
  /** Show the custom status text (`::part(custom)`); the label carries it either way. */
  "show-custom"?: boolean | "";
  /** Set by the element itself (read it, style on it: `presence-dot[status="online"]`). */
  readonly status?: PresenceDotStatus;
}

/**
 * `<presence-dot user="bob" [name="Bob"] [show-platform] [show-custom]>`: a live online/offline
 * indicator. Reflects `status` on itself and keeps `role="img"` and `aria-label` current
 * ("Bob is online: In a meeting", "bob was last seen 5 minutes ago").
 *
 * Styling: `--presence-dot-size`, `--presence-dot-online`, `--presence-dot-offline`,
 * `--presence-dot-unknown`, `--presence-dot-custom`, `--presence-dot-custom-max`, and
 * `::part(dot)`, `::part(platform)`, `::part(custom)`.
 */
export class PresenceDot extends HTMLElement {
  static readonly observedAttributes: string[];
  /** The watched user id (the `user` attribute). */
  user: string;
  /** The latest state of the user, or `undefined` (status `unknown`). */
  readonly state: PresenceState | undefined;
  connectedCallback(): void;
  disconnectedCallback(): void;
  attributeChangedCallback(name: string, oldValue: string | null, value: string | null): void;
  /** Redraw from the shared client's current state; harmless to call. */
  render(): void;
}

/**
 * Make every `<presence-dot>` on the page (present and future) use `client`. Calling it again
 * with another client moves all dots to it; `null` detaches them (they show `unknown`).
 */
export function usePresence<C extends PresenceClient | null>(client: C): C;

/** The client given to `usePresence()`, or `null`. */
export function presenceClient(): PresenceClient | null;

/** "5 minutes ago", "yesterday", "just now": how long ago `since` (ms) was, in English. */
export function timeAgo(since: number, now?: number): string;

/** The accessible label of a dot, e.g. "Bob is online: In a meeting", "bob was never seen". */
export function describePresence(name: string, state: PresenceState | undefined, now?: number): string;

/** The custom status text of a state, or `null`. */
export function customOf(state: PresenceState | undefined): string | null;

/** A small decorative inline SVG for a platform name (trusted markup). */
export function platformIcon(platform: string): string;

/** Human name of a platform: "ios" → "iOS", "mac" → "macOS". */
export function platformName(platform: string): string;

declare global {
  interface HTMLElementTagNameMap {
    "presence-dot": PresenceDot;
  }
}
