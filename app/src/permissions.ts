/**
 * What this member may edit, by the server's own write rules: `contract/permissions.json`,
 * which `fieldsync contract` generates from `model/permissions.py`. Nothing here restates a
 * rule; it only evaluates the data the way `check_write` does, so a field shown editable is
 * one the server accepts a change to and a read-only one would be refused.
 */
import contract from "../../contract/permissions.json";

export type Level = "lead" | "specialist" | "viewer";

interface EntityRule {
  readonly create: boolean;
  readonly delete: boolean;
  readonly edit: readonly string[];
  readonly scope: string;
}

interface LevelRules {
  readonly may_push: boolean;
  readonly entities: Readonly<Record<string, EntityRule>>;
}

const LEVELS = contract.levels as unknown as Readonly<Record<string, LevelRules>>;
const ALL = contract.all_fields;
const DELETED = contract.deleted_field;

export interface Member {
  readonly userId: string;
  /** null while unknown (never online yet): nothing is editable. */
  readonly level: Level | null;
  /** Activities a non-deleted summoning names this user for. */
  readonly summonedTo: ReadonlySet<string>;
}

export function isLevel(value: unknown): value is Level {
  return typeof value === "string" && value in LEVELS;
}

function rule(member: Member, entityType: string): EntityRule | null {
  if (member.level === null) return null;
  const level = LEVELS[member.level];
  if (level === undefined || !level.may_push) return null;
  return level.entities[entityType] ?? null;
}

function inScope(rule: EntityRule, member: Member, entityId: string, values: object): boolean {
  switch (rule.scope) {
    case "any": return true;
    case "summoned_activity": return member.summonedTo.has(entityId);
    case "own_summoning": return (values as { user_id?: unknown }).user_id === member.userId;
    default: return false; // a scope this build does not know: show read-only, never guess
  }
}

/** Whether `member` may change `field` of this existing entity. */
export function mayEdit(member: Member, entityType: string, entityId: string, values: object, field: string): boolean {
  const found = rule(member, entityType);
  if (found === null || !inScope(found, member, entityId, values)) return false;
  if (field === DELETED) return found.delete;
  return found.edit.includes(ALL) || found.edit.includes(field);
}

export function mayCreate(member: Member, entityType: string): boolean {
  return rule(member, entityType)?.create ?? false;
}

/** Whether the member may push at all (a viewer may not). */
export function mayWrite(member: Member): boolean {
  return member.level !== null && (LEVELS[member.level]?.may_push ?? false);
}
