-- API tokens issued with `connectflow tokens issue` (issue 23), beside the
-- bootstrap tokens of CONNECTFLOW_API_TOKENS (which are not stored here).
-- * Only the SHA-256 digest of a token is kept, never the token: whoever
--   reads this table (a backup, a replica) cannot call the API with it. The
--   tokens are 32 random bytes, so the digest cannot be reversed by guessing.
-- * programs NULL means every program, present and future; an array names
--   the programs the token may see. scopes names what it may do (`read`,
--   `stats`, `revoke`, `audit`); a name a process does not know is ignored
--   by that process, so a newer scope can be granted before every process
--   knows it.
-- * expires_at NULL means never. A revoked token keeps its row (revoked_at)
--   so that `tokens list` and the access log can still name it.
-- * Every API process reads the active rows every ~2 s, so a new, revoked or
--   expired token takes effect within 5 s without a restart; last_used_at is
--   written at most once a minute per token and process, in batches.
CREATE TABLE api_tokens (
    token_id      text        PRIMARY KEY,
    name          text        NOT NULL,
    digest        bytea       NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    programs      text[],
    scopes        text[]      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
