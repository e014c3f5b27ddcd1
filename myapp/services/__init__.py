"""Business units of work (the seeds' services). Each module documents its transactional contract.

* :mod:`myapp.services.dispatch`: the dispatch engine (``dispatch.run(company_id)``, the
  seeds' ``engine.run``).
"""
