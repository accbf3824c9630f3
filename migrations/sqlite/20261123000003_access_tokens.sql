-- Bearer tokens of the admin API, stored only as the SHA-256 of the token (hex). A token is
-- valid while `revoked_at` is null; names are unique among valid tokens. Conventions as in
-- 20261123000001_engine.sql (UUID blobs, fixed-width UTC text times).
create table access_tokens (
    id          blob primary key,
    name        text not null,
    token_hash  text not null unique,
    created_at  text not null,
    revoked_at  text
) strict;

create unique index access_tokens_active_name on access_tokens (name) where revoked_at is null;
