"""Stand-in for transformers' ``utils/fetch_hub_objects_for_ci.py`` (a repository script, not in the sdist).

``test_image_processing_common`` imports ``url_to_local_path`` from it to map fixture URLs to files that
transformers' CI downloads beforehand. hf_seg's tests run offline and skip the Hub-bound image-processing tests, so
the URL is returned unchanged.
"""


def url_to_local_path(url):
    return url
