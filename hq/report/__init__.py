"""The usage report (``hq-admin report``): ``data`` reads the report views into plain numbers
for a time window, ``figures`` draws them with matplotlib, ``page`` writes one self-contained
HTML page (or ``--png`` files). Only ``data`` touches the database, and only the views a
reporting account may read, so every number in the report can be rebuilt with SQL."""
