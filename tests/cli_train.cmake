# `adapters train`, `eval` and `predict` end to end on a tiny dataset, and their errors.
file(REMOVE_RECURSE ${OUT})
set(common --model ${MODEL} --tokenizer ${TOKENIZER})
execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config "lora[r=4]" --train ${DATA}/train.jsonl
                        --validation ${DATA}/validation.jsonl --test ${DATA}/test.jsonl --output ${OUT}/run
                        --epochs 2 --batch-size 8 --no-progress
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "adapters train exited ${rc}: ${out} ${err}")
endif()
foreach(f results.json metrics.jsonl curves.svg best/trainable.safetensors adapter/adapter_config.json
          adapter/adapter.safetensors adapter/head_config.json adapter/head.safetensors)
  if(NOT EXISTS ${OUT}/run/${f})
    message(FATAL_ERROR "adapters train wrote no ${f}")
  endif()
endforeach()
file(READ ${OUT}/run/results.json results)
string(JSON accuracy GET ${results} test accuracy)
string(JSON status GET ${results} status)
if(NOT status STREQUAL "completed")
  message(FATAL_ERROR "train status ${status}")
endif()
# A second run into the same folder is refused (exit 1, the folder named), unless --overwrite.
execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config lora --train ${DATA}/train.jsonl --output ${OUT}/run
                        --epochs 1 --no-progress
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "overwrite")
  message(FATAL_ERROR "expected exit 1 naming --overwrite for an existing run, found ${rc}: ${err}")
endif()
# eval prints the metrics; predict one JSON line per text with a known label.
execute_process(COMMAND ${ADAPTERS} eval ${common} --adapter ${OUT}/run/adapter --data ${DATA}/test.jsonl
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "\"accuracy\"")
  message(FATAL_ERROR "adapters eval exited ${rc}: ${out} ${err}")
endif()
execute_process(COMMAND ${ADAPTERS} predict ${common} --adapter ${OUT}/run/adapter --text "the dog was good" --text "it was bad"
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(REGEX MATCHALL "\"label\":\"(pos|neg)\"" labels "${out}")
list(LENGTH labels n)
if(NOT rc EQUAL 0 OR NOT n EQUAL 2)
  message(FATAL_ERROR "adapters predict exited ${rc}, ${n} labels: ${out} ${err}")
endif()
# A learning rate that is not finite or not positive is refused by name, never replaced by the default.
foreach(lr nan -1 inf)
  execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config lora --train ${DATA}/train.jsonl --output ${OUT}/lr
                          --lr ${lr} --no-progress
                  RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
  if(NOT rc EQUAL 1 OR NOT err MATCHES "learning_rate \\(--lr\\)")
    message(FATAL_ERROR "expected exit 1 naming --lr for --lr ${lr}, found ${rc}: ${err}")
  endif()
endforeach()
# Usage errors exit 2; a malformed data line exits 1 naming file and line.
execute_process(COMMAND ${ADAPTERS} train --no-such-option RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "expected exit 2 for a usage error, found ${rc}")
endif()
execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config lora --train ${MALFORMED} --output ${OUT}/bad
                        --no-progress
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "malformed.jsonl:3")
  message(FATAL_ERROR "expected exit 1 naming malformed.jsonl:3, found ${rc}: ${err}")
endif()
# `pretrain --objective causal`: a tiny GPT-2 trained a few steps on a tiny corpus (packed blocks)
# lowers its loss and saves the base model's weights; an encoder config is refused.
set(lines "the cat sat on the mat ." "the dog ran to the park ." "john lives in new york ." "she went to paris today ."
          "the movie was very good ." "he was born in london ." "the big dog was happy ." "we went to the city .")
string(REPLACE ";" "\n" corpus "${lines};${lines};${lines};${lines}")
file(WRITE ${OUT}/corpus.txt "${corpus}\n")
set(gpt2 ${MODEL}/../gpt2/config.json)
# Runs `adapters pretrain ARGS... --out OUT/DIR`; fails unless it exits 0, its final loss is below
# its first, and OUT/DIR/model.safetensors exists.
function(expect_pretraining_lowers_loss dir)
  execute_process(COMMAND ${ADAPTERS} pretrain ${ARGN} --out ${OUT}/${dir}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0 OR NOT err MATCHES "first loss ([0-9.]+), final loss ([0-9.]+)")
    message(FATAL_ERROR "adapters pretrain (${dir}) exited ${rc}: ${out} ${err}")
  endif()
  set(first ${CMAKE_MATCH_1})
  set(final ${CMAKE_MATCH_2})
  if(NOT final LESS first OR NOT EXISTS ${OUT}/${dir}/model.safetensors)
    message(FATAL_ERROR "pretraining (${dir}): loss ${first} -> ${final}, weights saved: ${OUT}/${dir}/model.safetensors: ${err}")
  endif()
endfunction()
expect_pretraining_lowers_loss(causal --objective causal --config ${gpt2} --tokenizer ${TOKENIZER} --corpus ${OUT}/corpus.txt
                               --max-steps 60 --batch-size 8 --max-length 16 --lr 3e-3 --warmup-steps 5 --save-every 0
                               --threads 1)
execute_process(COMMAND ${ADAPTERS} pretrain --objective causal --config ${MODEL}/config.json --tokenizer ${TOKENIZER}
                        --corpus ${OUT}/corpus.txt --out ${OUT}/causal-bert --max-steps 1 --threads 1
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "expected a decoder")
  message(FATAL_ERROR "expected exit 1 naming a decoder for --objective causal on an encoder, found ${rc}: ${err}")
endif()
# `pretrain` (masked LM, the default objective) through the trainer: the loss falls, the weights
# and the trainer's checkpoint land in --out; a second run there is refused unless --overwrite.
expect_pretraining_lowers_loss(masked --config ${MODEL}/config.json --tokenizer ${TOKENIZER} --corpus ${OUT}/corpus.txt
                               --max-steps 30 --batch-size 8 --max-length 12 --lr 3e-3 --warmup-steps 3 --save-every 0
                               --threads 1 --no-progress)
if(NOT EXISTS ${OUT}/masked/checkpoint-30/optimizer.safetensors)
  message(FATAL_ERROR "masked pretraining: expected the trainer's checkpoint-30 in ${OUT}/masked")
endif()
execute_process(COMMAND ${ADAPTERS} pretrain --config ${MODEL}/config.json --tokenizer ${TOKENIZER}
                        --corpus ${OUT}/corpus.txt --out ${OUT}/masked --max-steps 1 --threads 1 --no-progress
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "overwrite")
  message(FATAL_ERROR "expected exit 1 naming --overwrite for pretraining into a run, found ${rc}: ${err}")
endif()
# `train --task masked_lm`: an adapter trained on the texts' masked tokens, saved with its head.
execute_process(COMMAND ${ADAPTERS} train ${common} --task masked_lm --adapter-config seq_bn --train ${DATA}/train.jsonl
                        --validation ${DATA}/validation.jsonl --output ${OUT}/mlm --max-steps 3 --batch-size 8 --no-progress
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "adapters train --task masked_lm exited ${rc}: ${out} ${err}")
endif()
file(READ ${OUT}/mlm/adapter/head_config.json head)
file(READ ${OUT}/mlm/metrics.jsonl metrics)
if(NOT head MATCHES "masked_lm" OR NOT metrics MATCHES "perplexity")
  message(FATAL_ERROR "train --task masked_lm: head ${head}, metrics ${metrics}")
endif()
# One adapter per example (multi-tenant training): the tenant column names each example's adapter;
# every named adapter trains in the same batches, one adapter per row, and is saved on its own
# beside the head they share.
execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config "lora[r=4]" --train ${DATA}/tenants.jsonl
                        --adapter-column tenant --output ${OUT}/tenants --max-steps 3 --batch-size 6 --no-progress
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "adapters train --adapter-column exited ${rc}: ${out} ${err}")
endif()
foreach(f adapters/a/adapter_config.json adapters/a/adapter.safetensors adapters/b/adapter.safetensors
          adapters/task/head_config.json)
  if(NOT EXISTS ${OUT}/tenants/${f})
    message(FATAL_ERROR "adapters train --adapter-column wrote no ${f}")
  endif()
endforeach()
if(EXISTS ${OUT}/tenants/adapters/__base__)
  message(FATAL_ERROR "\"__base__\" examples must train no adapter")
endif()
# A validation example naming an adapter the training data does not have: exit 1, named.
execute_process(COMMAND ${ADAPTERS} train ${common} --adapter-config lora --train ${DATA}/tenants.jsonl
                        --validation ${DATA}/tenants_validation.jsonl --adapter-column tenant --output ${OUT}/tenants_bad
                        --max-steps 1 --no-progress
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_VARIABLE err)
if(NOT rc EQUAL 1 OR NOT err MATCHES "tenants_validation.jsonl:2: adapter 'c'")
  message(FATAL_ERROR "expected exit 1 naming tenants_validation.jsonl:2 and adapter 'c', found ${rc}: ${err}")
endif()
