-- Keeps a consumer's entries from going idle (its heartbeat), only those it still owns: an
-- entry another consumer took over is never taken back. XCLAIM … JUSTID resets the idle
-- time without counting a delivery; ownership is read once per stream and the entries are
-- claimed in bulk.
-- KEYS[1] stream, KEYS[2] solo stream of a job queue (else KEYS[1] again)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..6] the ids' bounds (see owned_sets), ARGV[7..]
-- entry ids. Returns the ids another consumer holds now (those no longer pending at all —
-- finished meanwhile — are not listed).
return touch_entries(argv_from(7), KEYS[1], KEYS[2], ARGV[1], ARGV[2], 3)
