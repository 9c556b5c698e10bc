"""The MySQL/MariaDB backend: ``mysql://user[:pw]@host[:3306]/database``.

One module per concern, none imported here (the job's keeper imports
``lelect.backends.mysql.handback`` under ``python -S -I``, without PyMySQL):

- ``sql``       the tables and one statement text per verb (standard library only);
- ``link``      URL options, a PyMySQL session whose every call is bounded, one-line errors;
- ``backend``   the Backend: guarded verbs for lelect's lease engine (``lelect.lease``);
- ``handback``  the keeper's standard-library MySQL client: release by token after lelect died.
"""
