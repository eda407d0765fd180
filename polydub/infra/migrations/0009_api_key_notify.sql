-- Every API replica caches the keys it has authenticated (polydub.api.key_cache). Any change
-- to a key row, made by `polydub keys revoke` or by hand in SQL, tells the replicas at commit,
-- so a revoked key stops working within moments instead of when a cache entry expires.
CREATE OR REPLACE FUNCTION polydub_api_key_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('polydub_api_keys', OLD.prefix);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_changed
    AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION polydub_api_key_changed();

-- TRUNCATE has no rows to name: '*' empties every replica's cache.
CREATE OR REPLACE FUNCTION polydub_api_keys_truncated() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('polydub_api_keys', '*');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_truncated
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION polydub_api_keys_truncated();
