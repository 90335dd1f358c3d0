"""`cliplab explore`: a server-rendered web page over the materialised artifacts (one image at a time, any model).

`core` reads the artifact root and LanceDB as the pipeline left them and calls the functions the `cliplab heads`
CLI and the assets use (`assets.heads.maps.HeadAnalyses`, `cliplab.mutual`, `cliplab.evaluation.saliency`);
`concepts` computes an uploaded image's visual concepts with the same functions as the mutual-knowledge assets;
`app` is the Starlette application (request parsing, HTML); `cli` registers the subcommand.
"""
