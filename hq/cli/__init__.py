"""hq command line programs: hq-submit, hq-client, hq-admin, hq-dbadmin."""
