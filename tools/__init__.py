"""Development scripts (not shipped with the pack); a package so that tests can import its modules."""
