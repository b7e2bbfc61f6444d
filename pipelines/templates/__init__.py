"""Pipeline templates, a layer on the base that the base never imports.

``spec`` loads and checks template files (``shipped/`` holds the ones Blaze ships),
``expressions`` is their safe expression language, ``steps`` runs steps through the SDK,
``operators`` wraps steps as Airflow operators (the only module here that imports Airflow:
import it only where Airflow runs), and ``airflow_api`` is the REST client ``blaze pipeline``
uses.
"""
