"""Jobs: selections of the asset graph that run together (one partition per run)."""

from dagster import AssetSelection, define_asset_job

from assets import checkpoint, data, encodings
from assets.evaluation import dissect, explanations, localisation, robustness, saliency, table
from assets.evaluation import roar as roar_assets
from assets.heads import contributions as heads
from assets.heads import maps as head_maps
from assets.heads import spans as head_spans
from assets.mutual import concepts, descriptors, evaluations
from assets.mutual import knowledge as mutual
from assets.toy import world as toy

# The root of every model's lineage (partitioned by model alone, so a job of its own): toyworld (what the toy
# CLIP and the toy AFT variants train on) and the verified weights of one model.
MODELS = AssetSelection.assets(toy.toyworld, checkpoint.checkpoint)
models_job = define_asset_job("models", selection=MODELS,
                              description="toyworld and the checkpoint of one model: open_clip tag verified, local file "
                                          "converted, toy CLIP trained or AFT fine-tuned")
checkpoint_job = define_asset_job("checkpoints", selection=AssetSelection.assets(checkpoint.checkpoint),
                                  description="The checkpoint of one model (toyworld must exist for toy and toyworld-trained models)")

PARTITIONED = AssetSelection.assets(data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings,
                                    concepts.prominent_patches, concepts.concept_clusters)
DESCRIPTORS = AssetSelection.assets(descriptors.descriptor_embeddings, descriptors.class_descriptors)
MUTUAL = AssetSelection.assets(mutual.visual_concept_descriptors, mutual.mi_curves, mutual.mi_summary,
                               mutual.model_comparison, evaluations.concept_eval, evaluations.descriptor_zero_shot)
analyse_job = define_asset_job("analyse", selection=PARTITIONED,
                               description="All partitioned assets for one (model, dataset) partition")

# ViT only (a ResNet has no heads), so not part of `analyse`: materialise per partition or with this job.
HEADS = AssetSelection.assets(heads.head_contributions, heads.text_bank_embeddings, head_spans.head_spans,
                              head_spans.head_labels, head_spans.head_scores, head_maps.head_analysis_examples)
# The interpretability evaluation of one (model, dataset); `evaluation_table` collects every partition's.
EVALUATION = AssetSelection.assets(saliency.saliency_maps, localisation.localisation_eval,
                                   explanations.explanation_robustness, robustness.zero_shot_robustness,
                                   roar_assets.roar, dissect.neuron_concepts, table.evaluation_table)
evaluation_job = define_asset_job("evaluation", selection=EVALUATION,
                                  description="Saliency maps, localisation, explanation SSIM under noise, robust "
                                              "accuracy (APGD), ROAR, CLIP-dissect and the cross-model table for one (model, dataset)")

# The default graph for one (model, dataset), after `models` has made the model's checkpoint (`cliplab run`
# runs both); the unpartitioned cross-model tables refresh in the same run.
main_job = define_asset_job("main", selection=PARTITIONED | DESCRIPTORS | MUTUAL | HEADS | EVALUATION
                            | AssetSelection.assets(head_spans.head_score_table),
                            description="Every analysis of one (model, dataset): encodings, mutual knowledge, head spans, evaluation")
heads_job = define_asset_job("heads", selection=HEADS,
                             description="Per-head contributions and text banks (LanceDB), TextSpan per head, labels and scores for one ViT (model, dataset)")

# Needs a descriptor bank (toyworld's, a published one, or the registry entry's `descriptors` file).
descriptors_job = define_asset_job("descriptors", selection=DESCRIPTORS,
                                   description="The dataset's descriptor bank encoded by one model (LanceDB) and D_ŷ per class")
mutual_job = define_asset_job("mutual_knowledge", selection=DESCRIPTORS | MUTUAL,
                              description="Descriptors, D_v by visual prompting and OT, MI curves and the summary for one (model, dataset)")

JOBS = [models_job, checkpoint_job, main_job, analyse_job, heads_job, descriptors_job, mutual_job, evaluation_job]
