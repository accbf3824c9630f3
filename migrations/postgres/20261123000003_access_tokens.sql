-- Bearer tokens of the admin API, stored only as the SHA-256 of the token (hex). A token is
-- valid while `revoked_at` is null; names are unique among valid tokens.
create table kodomasu.access_tokens (
    id          uuid primary key,
    name        text        not null,
    token_hash  text        not null unique,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

create unique index access_tokens_active_name on kodomasu.access_tokens (name) where revoked_at is null;
