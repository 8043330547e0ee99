// Generated from proto/ by `npm run generate` (run by `make proto`); do not edit.

export const TaskSubmissionSchema = {
  "$defs": {
    "AgentSpec": {
      "additionalProperties": false,
      "description": "A sub-agent: an identity whose turns are steps.",
      "properties": {
        "id": {
          "description": "Agent id, unique within the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Id",
          "type": "string"
        },
        "instructions": {
          "default": "",
          "description": "System instructions given to the agent on every step.",
          "maxLength": 8000,
          "title": "Instructions",
          "type": "string"
        },
        "memory": {
          "$ref": "#/$defs/MemoryPolicy",
          "description": "What of its earlier turns each turn sees (default: none)."
        },
        "role": {
          "description": "Short role name, e.g. 'researcher'.",
          "maxLength": 200,
          "minLength": 1,
          "title": "Role",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "id",
        "role"
      ],
      "title": "AgentSpec",
      "type": "object"
    },
    "MemoryMode": {
      "description": "How an agent remembers its earlier turns.",
      "enum": [
        "none",
        "last_turns",
        "summary"
      ],
      "title": "MemoryMode",
      "type": "string"
    },
    "MemoryPolicy": {
      "additionalProperties": false,
      "description": "What of an agent's earlier turns its next turn sees, within a context budget.",
      "properties": {
        "max_chars": {
          "default": 4000,
          "description": "Characters of memory a prompt may hold; older turns go first.",
          "maximum": 100000,
          "minimum": 200,
          "title": "Max Chars",
          "type": "integer"
        },
        "max_turns": {
          "default": 4,
          "description": "last_turns: how many of the latest turns are shown.",
          "maximum": 100,
          "minimum": 1,
          "title": "Max Turns",
          "type": "integer"
        },
        "mode": {
          "$ref": "#/$defs/MemoryMode",
          "default": "none",
          "description": "How the agent remembers its earlier turns."
        },
        "seed": {
          "default": "",
          "description": "Memory the agent starts with: what a spawning parent gives its child (shown on every turn).",
          "maxLength": 8000,
          "title": "Seed",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "title": "MemoryPolicy",
      "type": "object"
    },
    "Plan": {
      "additionalProperties": false,
      "description": "Agents and the step DAG of one run.",
      "properties": {
        "agents": {
          "description": "The run's sub-agents.",
          "items": {
            "$ref": "#/$defs/AgentSpec"
          },
          "maxItems": 300,
          "minItems": 1,
          "title": "Agents",
          "type": "array"
        },
        "pattern": {
          "anyOf": [
            {
              "$ref": "#/$defs/PlanPattern"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "The template the plan follows, if any."
        },
        "steps": {
          "description": "The run's steps (a DAG over depends_on).",
          "items": {
            "$ref": "#/$defs/StepSpec"
          },
          "maxItems": 4000,
          "minItems": 1,
          "title": "Steps",
          "type": "array"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "agents",
        "steps"
      ],
      "title": "Plan",
      "type": "object"
    },
    "PlanPattern": {
      "description": "Pattern templates the planner can instantiate.",
      "enum": [
        "map",
        "map-reduce",
        "pipeline",
        "vote"
      ],
      "title": "PlanPattern",
      "type": "string"
    },
    "PlanRef": {
      "additionalProperties": false,
      "description": "A plan stored in the object store instead of travelling inline: found by its digest, checked by it.",
      "properties": {
        "sha256": {
          "description": "Hex SHA-256 of the plan's JSON bytes, which are the object 'plan-sha256-<sha256>' of the object store 'swarm_plans'. Readers check the digest: an object that does not match is refused.",
          "pattern": "^[0-9a-f]{64}$",
          "title": "Sha256",
          "type": "string"
        },
        "size": {
          "description": "Length of the plan's JSON in bytes.",
          "maximum": 67108864,
          "minimum": 1,
          "title": "Size",
          "type": "integer"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "sha256",
        "size"
      ],
      "title": "PlanRef",
      "type": "object"
    },
    "RunPolicy": {
      "description": "How a run treats failed steps.",
      "enum": [
        "fail-fast",
        "quorum"
      ],
      "title": "RunPolicy",
      "type": "string"
    },
    "SimToolCall": {
      "additionalProperties": false,
      "description": "For the 'sim' backend only: one tool call the simulated model makes.",
      "properties": {
        "arguments": {
          "additionalProperties": true,
          "description": "The call's arguments.",
          "title": "Arguments",
          "type": "object"
        },
        "arguments_ref": {
          "anyOf": [
            {
              "maxLength": 256,
              "type": "string"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "Read the arguments from this key of the payloads object store instead (large spawn requests).",
          "title": "Arguments Ref"
        },
        "tool": {
          "description": "The tool's registry name, e.g. 'spawn'.",
          "maxLength": 64,
          "minLength": 1,
          "title": "Tool",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "tool"
      ],
      "title": "SimToolCall",
      "type": "object"
    },
    "StepSpec": {
      "additionalProperties": false,
      "description": "One turn of one agent, a node of the run's DAG.",
      "properties": {
        "agent_id": {
          "description": "The agent that takes this turn.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Agent Id",
          "type": "string"
        },
        "depends_on": {
          "default": [],
          "description": "Steps whose outputs this step needs; it runs after all of them succeed.",
          "items": {
            "description": "An identifier: letters, digits, '_' or '-'.",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "type": "string"
          },
          "maxItems": 500,
          "title": "Depends On",
          "type": "array"
        },
        "id": {
          "description": "Step id, unique within the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Id",
          "type": "string"
        },
        "instruction": {
          "description": "What the agent must do in this step.",
          "maxLength": 16000,
          "minLength": 1,
          "title": "Instruction",
          "type": "string"
        },
        "max_attempts": {
          "default": 3,
          "description": "Attempts before the step is dead-lettered.",
          "maximum": 20,
          "minimum": 1,
          "title": "Max Attempts",
          "type": "integer"
        },
        "max_tokens": {
          "default": 256,
          "description": "Completion token budget of the step.",
          "maximum": 32768,
          "minimum": 1,
          "title": "Max Tokens",
          "type": "integer"
        },
        "output_schema": {
          "anyOf": [
            {
              "additionalProperties": true,
              "type": "object"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "JSON Schema the step's output must satisfy; a failing output gets a repair retry.",
          "title": "Output Schema"
        },
        "sim_echo": {
          "default": false,
          "description": "For the 'sim' backend only: the answer starts with the prompt the model received.",
          "title": "Sim Echo",
          "type": "boolean"
        },
        "sim_fault": {
          "anyOf": [
            {
              "enum": [
                "fail_once",
                "garbage"
              ],
              "type": "string"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "For the 'sim' inference backend only (load tests): 'fail_once' fails the step's first attempt, 'garbage' makes the model return an unusable output. Ignored by every other backend.",
          "title": "Sim Fault"
        },
        "sim_latency_ms": {
          "anyOf": [
            {
              "minimum": 0,
              "type": "number"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "For the 'sim' inference backend only: the simulated engine latency of this step.",
          "title": "Sim Latency Ms"
        },
        "sim_tool_calls": {
          "default": [],
          "description": "For the 'sim' backend only: the simulated model makes these tool calls in order, then answers. Ignored by every other backend.",
          "items": {
            "$ref": "#/$defs/SimToolCall"
          },
          "maxItems": 20,
          "title": "Sim Tool Calls",
          "type": "array"
        },
        "timeout_s": {
          "default": 120.0,
          "description": "Seconds one attempt may run.",
          "exclusiveMinimum": 0,
          "maximum": 3600,
          "title": "Timeout S",
          "type": "number"
        },
        "tools": {
          "default": [],
          "description": "Tools the agent may call in this step, by registry name (e.g. 'python', 'spawn').",
          "items": {
            "type": "string"
          },
          "title": "Tools",
          "type": "array"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "id",
        "agent_id",
        "instruction"
      ],
      "title": "StepSpec",
      "type": "object"
    }
  },
  "$id": "TaskSubmission.json",
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "additionalProperties": false,
  "anyOf": [
    {
      "properties": {
        "goal": {
          "type": "string"
        }
      },
      "required": [
        "goal"
      ]
    },
    {
      "properties": {
        "plan": {
          "type": "object"
        }
      },
      "required": [
        "plan"
      ]
    },
    {
      "properties": {
        "plan_ref": {
          "type": "object"
        }
      },
      "required": [
        "plan_ref"
      ]
    }
  ],
  "description": "A task published to the queue: a goal to decompose, or an explicit plan.",
  "properties": {
    "goal": {
      "anyOf": [
        {
          "maxLength": 32000,
          "pattern": "\\S",
          "type": "string"
        },
        {
          "type": "null"
        }
      ],
      "default": null,
      "description": "What the swarm must achieve (decomposed by the planner); not blank.",
      "title": "Goal"
    },
    "labels": {
      "additionalProperties": {
        "maxLength": 1024,
        "type": "string"
      },
      "description": "Free-form labels, recorded with the run.",
      "maxProperties": 64,
      "propertyNames": {
        "maxLength": 64,
        "minLength": 1
      },
      "title": "Labels",
      "type": "object"
    },
    "n_agents": {
      "anyOf": [
        {
          "maximum": 300,
          "minimum": 1,
          "type": "integer"
        },
        {
          "type": "null"
        }
      ],
      "default": null,
      "description": "Preferred number of sub-agents.",
      "title": "N Agents"
    },
    "pattern": {
      "anyOf": [
        {
          "$ref": "#/$defs/PlanPattern"
        },
        {
          "type": "null"
        }
      ],
      "default": null,
      "description": "Ask the planner for this pattern template."
    },
    "plan": {
      "anyOf": [
        {
          "$ref": "#/$defs/Plan"
        },
        {
          "type": "null"
        }
      ],
      "default": null,
      "description": "An explicit plan; when given, the planner only validates it."
    },
    "plan_ref": {
      "anyOf": [
        {
          "$ref": "#/$defs/PlanRef"
        },
        {
          "type": "null"
        }
      ],
      "default": null,
      "description": "An explicit plan stored in the object store (for plans over 256 KiB of JSON); instead of `plan`, never with it."
    },
    "policy": {
      "$ref": "#/$defs/RunPolicy",
      "default": "fail-fast",
      "description": "Failure policy of the run."
    },
    "priority": {
      "default": 0,
      "description": "Higher runs are scheduled first.",
      "maximum": 10,
      "minimum": -10,
      "title": "Priority",
      "type": "integer"
    },
    "quorum": {
      "default": 0.95,
      "description": "Fraction of sub-agents whose final turn must succeed (quorum policy).",
      "exclusiveMinimum": 0,
      "maximum": 1,
      "title": "Quorum",
      "type": "number"
    },
    "run_id": {
      "description": "Run id chosen by the client, used once; the Nats-Msg-Id header must carry the same value.",
      "pattern": "^[A-Za-z0-9_-]{1,64}$",
      "title": "Run Id",
      "type": "string"
    },
    "submitted_at": {
      "description": "When the client submitted the task (with an offset); recorded with the run.",
      "format": "date-time",
      "title": "Submitted At",
      "type": "string"
    },
    "tenant": {
      "default": "default",
      "description": "Tenant the run belongs to: the subject's tenant token (the planner fills it in when absent).",
      "pattern": "^[A-Za-z0-9_-]{1,64}$",
      "title": "Tenant",
      "type": "string"
    },
    "v": {
      "const": 1,
      "default": 1,
      "description": "Contract version of this message (CONTRACT_VERSION).",
      "title": "V",
      "type": "integer"
    }
  },
  "required": [
    "run_id",
    "v"
  ],
  "title": "TaskSubmission",
  "type": "object"
} as const;

export const RunEventSchema = {
  "$defs": {
    "AgentSpec": {
      "additionalProperties": false,
      "description": "A sub-agent: an identity whose turns are steps.",
      "properties": {
        "id": {
          "description": "Agent id, unique within the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Id",
          "type": "string"
        },
        "instructions": {
          "default": "",
          "description": "System instructions given to the agent on every step.",
          "maxLength": 8000,
          "title": "Instructions",
          "type": "string"
        },
        "memory": {
          "$ref": "#/$defs/MemoryPolicy",
          "description": "What of its earlier turns each turn sees (default: none)."
        },
        "role": {
          "description": "Short role name, e.g. 'researcher'.",
          "maxLength": 200,
          "minLength": 1,
          "title": "Role",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "id",
        "role"
      ],
      "title": "AgentSpec",
      "type": "object"
    },
    "MemoryMode": {
      "description": "How an agent remembers its earlier turns.",
      "enum": [
        "none",
        "last_turns",
        "summary"
      ],
      "title": "MemoryMode",
      "type": "string"
    },
    "MemoryPolicy": {
      "additionalProperties": false,
      "description": "What of an agent's earlier turns its next turn sees, within a context budget.",
      "properties": {
        "max_chars": {
          "default": 4000,
          "description": "Characters of memory a prompt may hold; older turns go first.",
          "maximum": 100000,
          "minimum": 200,
          "title": "Max Chars",
          "type": "integer"
        },
        "max_turns": {
          "default": 4,
          "description": "last_turns: how many of the latest turns are shown.",
          "maximum": 100,
          "minimum": 1,
          "title": "Max Turns",
          "type": "integer"
        },
        "mode": {
          "$ref": "#/$defs/MemoryMode",
          "default": "none",
          "description": "How the agent remembers its earlier turns."
        },
        "seed": {
          "default": "",
          "description": "Memory the agent starts with: what a spawning parent gives its child (shown on every turn).",
          "maxLength": 8000,
          "title": "Seed",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "title": "MemoryPolicy",
      "type": "object"
    },
    "MissingAgent": {
      "additionalProperties": false,
      "description": "A sub-agent whose final turn did not succeed: what a quorum run's answer is missing.",
      "properties": {
        "agent_id": {
          "description": "The agent.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Agent Id",
          "type": "string"
        },
        "error": {
          "default": "",
          "description": "Its last error, or why its final turn did not run.",
          "maxLength": 500,
          "title": "Error",
          "type": "string"
        },
        "role": {
          "default": "",
          "description": "Its role.",
          "maxLength": 200,
          "title": "Role",
          "type": "string"
        },
        "step_id": {
          "description": "Its final turn (its last step in dependency order).",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Step Id",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "agent_id",
        "step_id"
      ],
      "title": "MissingAgent",
      "type": "object"
    },
    "Plan": {
      "additionalProperties": false,
      "description": "Agents and the step DAG of one run.",
      "properties": {
        "agents": {
          "description": "The run's sub-agents.",
          "items": {
            "$ref": "#/$defs/AgentSpec"
          },
          "maxItems": 300,
          "minItems": 1,
          "title": "Agents",
          "type": "array"
        },
        "pattern": {
          "anyOf": [
            {
              "$ref": "#/$defs/PlanPattern"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "The template the plan follows, if any."
        },
        "steps": {
          "description": "The run's steps (a DAG over depends_on).",
          "items": {
            "$ref": "#/$defs/StepSpec"
          },
          "maxItems": 4000,
          "minItems": 1,
          "title": "Steps",
          "type": "array"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "agents",
        "steps"
      ],
      "title": "Plan",
      "type": "object"
    },
    "PlanPattern": {
      "description": "Pattern templates the planner can instantiate.",
      "enum": [
        "map",
        "map-reduce",
        "pipeline",
        "vote"
      ],
      "title": "PlanPattern",
      "type": "string"
    },
    "PlanRef": {
      "additionalProperties": false,
      "description": "A plan stored in the object store instead of travelling inline: found by its digest, checked by it.",
      "properties": {
        "sha256": {
          "description": "Hex SHA-256 of the plan's JSON bytes, which are the object 'plan-sha256-<sha256>' of the object store 'swarm_plans'. Readers check the digest: an object that does not match is refused.",
          "pattern": "^[0-9a-f]{64}$",
          "title": "Sha256",
          "type": "string"
        },
        "size": {
          "description": "Length of the plan's JSON in bytes.",
          "maximum": 67108864,
          "minimum": 1,
          "title": "Size",
          "type": "integer"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "sha256",
        "size"
      ],
      "title": "PlanRef",
      "type": "object"
    },
    "PlanSource": {
      "description": "Where a plan came from.",
      "enum": [
        "explicit",
        "llm",
        "template"
      ],
      "title": "PlanSource",
      "type": "string"
    },
    "RejectionCode": {
      "description": "Why one part of a task was rejected: the JSON Schema keyword it breaks, or a rule schemas cannot state.",
      "enum": [
        "type",
        "required",
        "additionalProperties",
        "pattern",
        "format",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "maxProperties",
        "propertyNames",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "const",
        "enum",
        "anyOf",
        "json",
        "msg_id_missing",
        "msg_id_mismatch",
        "tenant_mismatch",
        "duplicate_id",
        "unknown_agent",
        "unknown_step",
        "cycle",
        "limit",
        "too_large",
        "plan_unavailable",
        "plan_failed",
        "invalid"
      ],
      "title": "RejectionCode",
      "type": "string"
    },
    "RejectionReason": {
      "additionalProperties": false,
      "description": "One machine-readable reason a task was rejected.",
      "properties": {
        "code": {
          "$ref": "#/$defs/RejectionCode",
          "description": "Which rule it breaks."
        },
        "message": {
          "description": "The reason in words.",
          "maxLength": 1000,
          "title": "Message",
          "type": "string"
        },
        "path": {
          "description": "JSON Pointer (RFC 6901) into the submitted body, e.g. '/plan/steps/3/depends_on/0'; '' for the message as a whole (its headers, subject or bytes).",
          "maxLength": 1000,
          "title": "Path",
          "type": "string"
        }
      },
      "required": [
        "path",
        "code",
        "message"
      ],
      "title": "RejectionReason",
      "type": "object"
    },
    "RunAccepted": {
      "additionalProperties": false,
      "description": "The planner took the task and is planning it: the run exists (the run index shows it as planning).",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "goal": {
          "description": "The task's goal, cut as the run index shows it.",
          "maxLength": 200,
          "title": "Goal",
          "type": "string"
        },
        "kind": {
          "const": "accepted",
          "default": "accepted",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "submitted_at": {
          "description": "When the task was submitted.",
          "format": "date-time",
          "title": "Submitted At",
          "type": "string"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "goal",
        "submitted_at",
        "v",
        "kind"
      ],
      "title": "RunAccepted",
      "type": "object"
    },
    "RunCancelRequested": {
      "additionalProperties": false,
      "description": "A client asks to cancel the run.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "kind": {
          "const": "cancel",
          "default": "cancel",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "reason": {
          "default": "cancelled by client",
          "description": "Why.",
          "maxLength": 4000,
          "title": "Reason",
          "type": "string"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "v",
        "kind"
      ],
      "title": "RunCancelRequested",
      "type": "object"
    },
    "RunCancelled": {
      "additionalProperties": false,
      "description": "The run was cancelled: queued steps were dropped.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "kind": {
          "const": "cancelled",
          "default": "cancelled",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "reason": {
          "description": "Why.",
          "maxLength": 4000,
          "title": "Reason",
          "type": "string"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "reason",
        "v",
        "kind"
      ],
      "title": "RunCancelled",
      "type": "object"
    },
    "RunCompleted": {
      "additionalProperties": false,
      "description": "The final answer.",
      "properties": {
        "answer": {
          "description": "The synthesized answer.",
          "title": "Answer",
          "type": "string"
        },
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "kind": {
          "const": "completed",
          "default": "completed",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "missing_agents": {
          "default": [],
          "description": "Sub-agents whose final turn did not succeed: the answer was made without them.",
          "items": {
            "$ref": "#/$defs/MissingAgent"
          },
          "title": "Missing Agents",
          "type": "array"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "summary": {
          "$ref": "#/$defs/RunSummary",
          "description": "Totals of the whole run."
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "answer",
        "summary",
        "v",
        "kind"
      ],
      "title": "RunCompleted",
      "type": "object"
    },
    "RunExecuted": {
      "additionalProperties": false,
      "description": "Every step is finished; the aggregator synthesizes the answer.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "goal": {
          "description": "The run's goal.",
          "maxLength": 32000,
          "title": "Goal",
          "type": "string"
        },
        "kind": {
          "const": "executed",
          "default": "executed",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "missing_agents": {
          "default": [],
          "description": "Sub-agents whose final turn did not succeed (a quorum run goes on without them).",
          "items": {
            "$ref": "#/$defs/MissingAgent"
          },
          "title": "Missing Agents",
          "type": "array"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "sink_step_ids": {
          "description": "Succeeded steps no other step depends on: the synthesis input.",
          "items": {
            "description": "An identifier: letters, digits, '_' or '-'.",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "type": "string"
          },
          "title": "Sink Step Ids",
          "type": "array"
        },
        "submitted_at": {
          "description": "When the task was submitted.",
          "format": "date-time",
          "title": "Submitted At",
          "type": "string"
        },
        "summary": {
          "$ref": "#/$defs/RunSummary",
          "description": "Totals of the step phase (wall_ms up to now)."
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "goal",
        "sink_step_ids",
        "summary",
        "submitted_at",
        "v",
        "kind"
      ],
      "title": "RunExecuted",
      "type": "object"
    },
    "RunFailed": {
      "additionalProperties": false,
      "description": "The run ended without an answer.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "error": {
          "description": "Why.",
          "maxLength": 4000,
          "title": "Error",
          "type": "string"
        },
        "failed_step_ids": {
          "default": [],
          "description": "Steps dead-lettered.",
          "items": {
            "description": "An identifier: letters, digits, '_' or '-'.",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "type": "string"
          },
          "title": "Failed Step Ids",
          "type": "array"
        },
        "kind": {
          "const": "failed",
          "default": "failed",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "missing_agents": {
          "default": [],
          "description": "Sub-agents whose final turn did not succeed, when the step phase ended.",
          "items": {
            "$ref": "#/$defs/MissingAgent"
          },
          "title": "Missing Agents",
          "type": "array"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "summary": {
          "anyOf": [
            {
              "$ref": "#/$defs/RunSummary"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "Totals, when the run got that far."
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "error",
        "v",
        "kind"
      ],
      "title": "RunFailed",
      "type": "object"
    },
    "RunPlanned": {
      "additionalProperties": false,
      "anyOf": [
        {
          "properties": {
            "plan": {
              "type": "object"
            }
          },
          "required": [
            "plan"
          ]
        },
        {
          "properties": {
            "plan_ref": {
              "type": "object"
            }
          },
          "required": [
            "plan_ref"
          ]
        }
      ],
      "description": "The planner produced a validated plan; the dispatcher takes it from here.",
      "properties": {
        "agents_count": {
          "default": 0,
          "description": "Agents in the plan (known without reading it).",
          "minimum": 0,
          "title": "Agents Count",
          "type": "integer"
        },
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "goal": {
          "description": "The goal (or a description of the explicit plan).",
          "maxLength": 32000,
          "title": "Goal",
          "type": "string"
        },
        "kind": {
          "const": "planned",
          "default": "planned",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "llm_schema": {
          "anyOf": [
            {
              "enum": [
                "sub-questions",
                "full-plan"
              ],
              "type": "string"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "How the LLM planned, when it did: 'sub-questions' (a small model listed agents with a role and an instruction; code built the DAG) or 'full-plan' (the model wrote agents and steps).",
          "title": "Llm Schema"
        },
        "note": {
          "default": "",
          "description": "Why a template was used, when it was.",
          "maxLength": 4000,
          "title": "Note",
          "type": "string"
        },
        "plan": {
          "anyOf": [
            {
              "$ref": "#/$defs/Plan"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "The validated plan, when its JSON fits 256 KiB; else `plan_ref` names it."
        },
        "plan_ref": {
          "anyOf": [
            {
              "$ref": "#/$defs/PlanRef"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "Where the validated plan is stored, when it is too large to travel inline."
        },
        "policy": {
          "$ref": "#/$defs/RunPolicy",
          "default": "fail-fast",
          "description": "Failure policy."
        },
        "priority": {
          "default": 0,
          "description": "Run priority.",
          "title": "Priority",
          "type": "integer"
        },
        "quorum": {
          "default": 0.95,
          "description": "Quorum policy: the fraction of sub-agents whose final turn must succeed.",
          "title": "Quorum",
          "type": "number"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "source": {
          "$ref": "#/$defs/PlanSource",
          "description": "Where the plan came from."
        },
        "steps_count": {
          "default": 0,
          "description": "Steps in the plan (known without reading it).",
          "minimum": 0,
          "title": "Steps Count",
          "type": "integer"
        },
        "submitted_at": {
          "description": "When the task was submitted.",
          "format": "date-time",
          "title": "Submitted At",
          "type": "string"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "goal",
        "source",
        "submitted_at",
        "v",
        "kind"
      ],
      "title": "RunPlanned",
      "type": "object"
    },
    "RunPolicy": {
      "description": "How a run treats failed steps.",
      "enum": [
        "fail-fast",
        "quorum"
      ],
      "title": "RunPolicy",
      "type": "string"
    },
    "RunProgress": {
      "additionalProperties": false,
      "description": "Throttled progress of a running run.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "finished_step_ids": {
          "default": [],
          "description": "Steps that finished (succeeded or dead-lettered) since the run's previous progress event (after a dispatcher takeover: every finished step, again). With the plan, a follower can show each agent's turns done and its current step.",
          "items": {
            "description": "An identifier: letters, digits, '_' or '-'.",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "type": "string"
          },
          "title": "Finished Step Ids",
          "type": "array"
        },
        "kind": {
          "const": "progress",
          "default": "progress",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "retries_count": {
          "description": "Retries so far.",
          "minimum": 0,
          "title": "Retries Count",
          "type": "integer"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "steps_failed": {
          "description": "Steps dead-lettered.",
          "minimum": 0,
          "title": "Steps Failed",
          "type": "integer"
        },
        "steps_queued": {
          "description": "Steps on the work queue, not yet finished.",
          "minimum": 0,
          "title": "Steps Queued",
          "type": "integer"
        },
        "steps_succeeded": {
          "description": "Steps succeeded.",
          "minimum": 0,
          "title": "Steps Succeeded",
          "type": "integer"
        },
        "steps_total": {
          "description": "Steps in the plan.",
          "minimum": 0,
          "title": "Steps Total",
          "type": "integer"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "steps_total",
        "steps_queued",
        "steps_succeeded",
        "steps_failed",
        "retries_count",
        "v",
        "kind"
      ],
      "title": "RunProgress",
      "type": "object"
    },
    "RunRejected": {
      "additionalProperties": false,
      "description": "The task could not be accepted; nothing will run.",
      "properties": {
        "at": {
          "description": "When it happened (with an offset).",
          "format": "date-time",
          "title": "At",
          "type": "string"
        },
        "error": {
          "description": "Why, in words: every reason on one line (cut when too long).",
          "maxLength": 4000,
          "title": "Error",
          "type": "string"
        },
        "kind": {
          "const": "rejected",
          "default": "rejected",
          "description": "Event kind, also the last subject token.",
          "title": "Kind",
          "type": "string"
        },
        "reasons": {
          "default": [],
          "description": "Why, one entry per broken rule (the first 100).",
          "items": {
            "$ref": "#/$defs/RejectionReason"
          },
          "maxItems": 100,
          "title": "Reasons",
          "type": "array"
        },
        "run_id": {
          "description": "The run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Run Id",
          "type": "string"
        },
        "tenant": {
          "description": "Tenant of the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Tenant",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "run_id",
        "tenant",
        "error",
        "v",
        "kind"
      ],
      "title": "RunRejected",
      "type": "object"
    },
    "RunSummary": {
      "additionalProperties": false,
      "description": "Counts and totals of a finished run.",
      "properties": {
        "agents_count": {
          "description": "Sub-agents in the plan.",
          "minimum": 0,
          "title": "Agents Count",
          "type": "integer"
        },
        "completion_tokens": {
          "description": "Completion tokens over all steps (and synthesis).",
          "minimum": 0,
          "title": "Completion Tokens",
          "type": "integer"
        },
        "prompt_tokens": {
          "description": "Prompt tokens over all steps (and synthesis).",
          "minimum": 0,
          "title": "Prompt Tokens",
          "type": "integer"
        },
        "retries_count": {
          "description": "Attempts beyond the first, over all steps.",
          "minimum": 0,
          "title": "Retries Count",
          "type": "integer"
        },
        "steps_cancelled": {
          "default": 0,
          "description": "Steps never run because the run ended first.",
          "minimum": 0,
          "title": "Steps Cancelled",
          "type": "integer"
        },
        "steps_failed": {
          "description": "Steps dead-lettered after their last attempt.",
          "minimum": 0,
          "title": "Steps Failed",
          "type": "integer"
        },
        "steps_succeeded": {
          "description": "Steps that succeeded.",
          "minimum": 0,
          "title": "Steps Succeeded",
          "type": "integer"
        },
        "steps_total": {
          "description": "Steps in the plan.",
          "minimum": 0,
          "title": "Steps Total",
          "type": "integer"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        },
        "wall_ms": {
          "description": "From submission to the final answer.",
          "minimum": 0,
          "title": "Wall Ms",
          "type": "number"
        }
      },
      "required": [
        "agents_count",
        "steps_total",
        "steps_succeeded",
        "steps_failed",
        "retries_count",
        "prompt_tokens",
        "completion_tokens",
        "wall_ms"
      ],
      "title": "RunSummary",
      "type": "object"
    },
    "SimToolCall": {
      "additionalProperties": false,
      "description": "For the 'sim' backend only: one tool call the simulated model makes.",
      "properties": {
        "arguments": {
          "additionalProperties": true,
          "description": "The call's arguments.",
          "title": "Arguments",
          "type": "object"
        },
        "arguments_ref": {
          "anyOf": [
            {
              "maxLength": 256,
              "type": "string"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "Read the arguments from this key of the payloads object store instead (large spawn requests).",
          "title": "Arguments Ref"
        },
        "tool": {
          "description": "The tool's registry name, e.g. 'spawn'.",
          "maxLength": 64,
          "minLength": 1,
          "title": "Tool",
          "type": "string"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "tool"
      ],
      "title": "SimToolCall",
      "type": "object"
    },
    "StepSpec": {
      "additionalProperties": false,
      "description": "One turn of one agent, a node of the run's DAG.",
      "properties": {
        "agent_id": {
          "description": "The agent that takes this turn.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Agent Id",
          "type": "string"
        },
        "depends_on": {
          "default": [],
          "description": "Steps whose outputs this step needs; it runs after all of them succeed.",
          "items": {
            "description": "An identifier: letters, digits, '_' or '-'.",
            "pattern": "^[A-Za-z0-9_-]{1,64}$",
            "type": "string"
          },
          "maxItems": 500,
          "title": "Depends On",
          "type": "array"
        },
        "id": {
          "description": "Step id, unique within the run.",
          "pattern": "^[A-Za-z0-9_-]{1,64}$",
          "title": "Id",
          "type": "string"
        },
        "instruction": {
          "description": "What the agent must do in this step.",
          "maxLength": 16000,
          "minLength": 1,
          "title": "Instruction",
          "type": "string"
        },
        "max_attempts": {
          "default": 3,
          "description": "Attempts before the step is dead-lettered.",
          "maximum": 20,
          "minimum": 1,
          "title": "Max Attempts",
          "type": "integer"
        },
        "max_tokens": {
          "default": 256,
          "description": "Completion token budget of the step.",
          "maximum": 32768,
          "minimum": 1,
          "title": "Max Tokens",
          "type": "integer"
        },
        "output_schema": {
          "anyOf": [
            {
              "additionalProperties": true,
              "type": "object"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "JSON Schema the step's output must satisfy; a failing output gets a repair retry.",
          "title": "Output Schema"
        },
        "sim_echo": {
          "default": false,
          "description": "For the 'sim' backend only: the answer starts with the prompt the model received.",
          "title": "Sim Echo",
          "type": "boolean"
        },
        "sim_fault": {
          "anyOf": [
            {
              "enum": [
                "fail_once",
                "garbage"
              ],
              "type": "string"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "For the 'sim' inference backend only (load tests): 'fail_once' fails the step's first attempt, 'garbage' makes the model return an unusable output. Ignored by every other backend.",
          "title": "Sim Fault"
        },
        "sim_latency_ms": {
          "anyOf": [
            {
              "minimum": 0,
              "type": "number"
            },
            {
              "type": "null"
            }
          ],
          "default": null,
          "description": "For the 'sim' inference backend only: the simulated engine latency of this step.",
          "title": "Sim Latency Ms"
        },
        "sim_tool_calls": {
          "default": [],
          "description": "For the 'sim' backend only: the simulated model makes these tool calls in order, then answers. Ignored by every other backend.",
          "items": {
            "$ref": "#/$defs/SimToolCall"
          },
          "maxItems": 20,
          "title": "Sim Tool Calls",
          "type": "array"
        },
        "timeout_s": {
          "default": 120.0,
          "description": "Seconds one attempt may run.",
          "exclusiveMinimum": 0,
          "maximum": 3600,
          "title": "Timeout S",
          "type": "number"
        },
        "tools": {
          "default": [],
          "description": "Tools the agent may call in this step, by registry name (e.g. 'python', 'spawn').",
          "items": {
            "type": "string"
          },
          "title": "Tools",
          "type": "array"
        },
        "v": {
          "const": 1,
          "default": 1,
          "description": "Contract version of this message (CONTRACT_VERSION).",
          "title": "V",
          "type": "integer"
        }
      },
      "required": [
        "id",
        "agent_id",
        "instruction"
      ],
      "title": "StepSpec",
      "type": "object"
    }
  },
  "$id": "RunEvent.json",
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "oneOf": [
    {
      "$ref": "#/$defs/RunAccepted"
    },
    {
      "$ref": "#/$defs/RunRejected"
    },
    {
      "$ref": "#/$defs/RunPlanned"
    },
    {
      "$ref": "#/$defs/RunProgress"
    },
    {
      "$ref": "#/$defs/RunExecuted"
    },
    {
      "$ref": "#/$defs/RunCompleted"
    },
    {
      "$ref": "#/$defs/RunFailed"
    },
    {
      "$ref": "#/$defs/RunCancelRequested"
    },
    {
      "$ref": "#/$defs/RunCancelled"
    }
  ],
  "title": "RunEvent"
} as const;
