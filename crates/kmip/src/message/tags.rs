//! The KMIP tags atrest's messages use (values from the KMIP specification tag tables).

use crate::ttlv::Tag;

/// Activation Date (Date-Time).
pub const ACTIVATION_DATE: Tag = Tag(0x420001);
/// Attribute (Structure).
pub const ATTRIBUTE: Tag = Tag(0x420008);
/// Attribute Index (Integer), KMIP 1.x only: reserved in 2.x.
pub const ATTRIBUTE_INDEX: Tag = Tag(0x420009);
/// Attribute Name (Text String).
pub const ATTRIBUTE_NAME: Tag = Tag(0x42000A);
/// Attribute Value (its type is the attribute's).
pub const ATTRIBUTE_VALUE: Tag = Tag(0x42000B);
/// Authentication (Structure).
pub const AUTHENTICATION: Tag = Tag(0x42000C);
/// Batch Count (Integer).
pub const BATCH_COUNT: Tag = Tag(0x42000D);
/// Batch Item (Structure).
pub const BATCH_ITEM: Tag = Tag(0x42000F);
/// Compromise Occurrence Date (Date-Time).
pub const COMPROMISE_OCCURRENCE_DATE: Tag = Tag(0x420021);
/// Credential (Structure).
pub const CREDENTIAL: Tag = Tag(0x420023);
/// Credential Type (Enumeration).
pub const CREDENTIAL_TYPE: Tag = Tag(0x420024);
/// Credential Value (a Structure for Username and Password; its type follows the Credential Type).
pub const CREDENTIAL_VALUE: Tag = Tag(0x420025);
/// Cryptographic Algorithm (Enumeration).
pub const CRYPTOGRAPHIC_ALGORITHM: Tag = Tag(0x420028);
/// Cryptographic Length (Integer).
pub const CRYPTOGRAPHIC_LENGTH: Tag = Tag(0x42002A);
/// Cryptographic Usage Mask (Integer).
pub const CRYPTOGRAPHIC_USAGE_MASK: Tag = Tag(0x42002C);
/// Initial Date (Date-Time).
pub const INITIAL_DATE: Tag = Tag(0x420039);
/// Key Block (Structure).
pub const KEY_BLOCK: Tag = Tag(0x420040);
/// Key Compression Type (Enumeration).
pub const KEY_COMPRESSION_TYPE: Tag = Tag(0x420041);
/// Key Format Type (Enumeration).
pub const KEY_FORMAT_TYPE: Tag = Tag(0x420042);
/// Key Material (Byte String or Structure).
pub const KEY_MATERIAL: Tag = Tag(0x420043);
/// Key Value (Byte String or Structure).
pub const KEY_VALUE: Tag = Tag(0x420045);
/// Key Wrapping Data (Structure).
pub const KEY_WRAPPING_DATA: Tag = Tag(0x420046);
/// Maximum Items (Integer).
pub const MAXIMUM_ITEMS: Tag = Tag(0x42004F);
/// Maximum Response Size (Integer).
pub const MAXIMUM_RESPONSE_SIZE: Tag = Tag(0x420050);
/// Name (Structure).
pub const NAME: Tag = Tag(0x420053);
/// Name Type (Enumeration).
pub const NAME_TYPE: Tag = Tag(0x420054);
/// Name Value (Text String).
pub const NAME_VALUE: Tag = Tag(0x420055);
/// Object Type (Enumeration).
pub const OBJECT_TYPE: Tag = Tag(0x420057);
/// Operation (Enumeration).
pub const OPERATION: Tag = Tag(0x42005C);
/// Password (Text String).
pub const PASSWORD: Tag = Tag(0x4200A1);
/// Protocol Version (Structure).
pub const PROTOCOL_VERSION: Tag = Tag(0x420069);
/// Protocol Version Major (Integer).
pub const PROTOCOL_VERSION_MAJOR: Tag = Tag(0x42006A);
/// Protocol Version Minor (Integer).
pub const PROTOCOL_VERSION_MINOR: Tag = Tag(0x42006B);
/// Query Function (Enumeration).
pub const QUERY_FUNCTION: Tag = Tag(0x420074);
/// Request Header (Structure).
pub const REQUEST_HEADER: Tag = Tag(0x420077);
/// Request Message (Structure).
pub const REQUEST_MESSAGE: Tag = Tag(0x420078);
/// Request Payload (Structure).
pub const REQUEST_PAYLOAD: Tag = Tag(0x420079);
/// Response Header (Structure).
pub const RESPONSE_HEADER: Tag = Tag(0x42007A);
/// Response Message (Structure).
pub const RESPONSE_MESSAGE: Tag = Tag(0x42007B);
/// Response Payload (Structure).
pub const RESPONSE_PAYLOAD: Tag = Tag(0x42007C);
/// Result Message (Text String).
pub const RESULT_MESSAGE: Tag = Tag(0x42007D);
/// Result Reason (Enumeration).
pub const RESULT_REASON: Tag = Tag(0x42007E);
/// Result Status (Enumeration).
pub const RESULT_STATUS: Tag = Tag(0x42007F);
/// Revocation Message (Text String).
pub const REVOCATION_MESSAGE: Tag = Tag(0x420080);
/// Revocation Reason (Structure).
pub const REVOCATION_REASON: Tag = Tag(0x420081);
/// Revocation Reason Code (Enumeration).
pub const REVOCATION_REASON_CODE: Tag = Tag(0x420082);
/// Server Information (Structure).
pub const SERVER_INFORMATION: Tag = Tag(0x420088);
/// State (Enumeration).
pub const STATE: Tag = Tag(0x42008D);
/// Symmetric Key (Structure).
pub const SYMMETRIC_KEY: Tag = Tag(0x42008F);
/// Template-Attribute (Structure), KMIP 1.x only: reserved in 2.x.
pub const TEMPLATE_ATTRIBUTE: Tag = Tag(0x420091);
/// Time Stamp (Date-Time).
pub const TIME_STAMP: Tag = Tag(0x420092);
/// Unique Batch Item ID (Byte String).
pub const UNIQUE_BATCH_ITEM_ID: Tag = Tag(0x420093);
/// Unique Identifier (Text String).
pub const UNIQUE_IDENTIFIER: Tag = Tag(0x420094);
/// Username (Text String).
pub const USERNAME: Tag = Tag(0x420099);
/// Vendor Identification (Text String).
pub const VENDOR_IDENTIFICATION: Tag = Tag(0x42009D);
/// Offset Items (Integer), KMIP 1.3 and later.
pub const OFFSET_ITEMS: Tag = Tag(0x4200D4);
/// Attributes (Structure), KMIP 2.0 and later.
pub const ATTRIBUTES: Tag = Tag(0x420125);
/// Attribute Reference (Enumeration, or a Structure for a vendor attribute), KMIP 2.0 and later.
pub const ATTRIBUTE_REFERENCE: Tag = Tag(0x42013B);
/// Located Items (Integer), KMIP 1.3 and later.
pub const LOCATED_ITEMS: Tag = Tag(0x4200D5);
/// Deactivation Date (Date-Time).
pub const DEACTIVATION_DATE: Tag = Tag(0x42002F);
/// Destroy Date (Date-Time).
pub const DESTROY_DATE: Tag = Tag(0x420033);
/// Compromise Date (Date-Time).
pub const COMPROMISE_DATE: Tag = Tag(0x420020);
/// Last Change Date (Date-Time).
pub const LAST_CHANGE_DATE: Tag = Tag(0x420048);
/// Original Creation Date (Date-Time), KMIP 1.2 and later.
pub const ORIGINAL_CREATION_DATE: Tag = Tag(0x4200BC);
/// Storage Status Mask (Integer).
pub const STORAGE_STATUS_MASK: Tag = Tag(0x42008E);
/// Object Group Member (Enumeration), KMIP 1.1 and later.
pub const OBJECT_GROUP_MEMBER: Tag = Tag(0x4200AC);
/// Secret Data (Structure).
pub const SECRET_DATA: Tag = Tag(0x420085);
/// Secret Data Type (Enumeration).
pub const SECRET_DATA_TYPE: Tag = Tag(0x420086);
/// Key (Byte String).
pub const KEY: Tag = Tag(0x42003F);
/// Protection Storage Masks (Structure), KMIP 2.0 and later.
pub const PROTECTION_STORAGE_MASKS: Tag = Tag(0x42015F);
/// Digest (Structure).
pub const DIGEST: Tag = Tag(0x420034);
/// Link (Structure).
pub const LINK: Tag = Tag(0x42004A);
/// Object Group (Text String).
pub const OBJECT_GROUP: Tag = Tag(0x420056);
/// Sensitive (Boolean), KMIP 1.4 and later.
pub const SENSITIVE: Tag = Tag(0x420120);
/// Extractable (Boolean), KMIP 1.4 and later.
pub const EXTRACTABLE: Tag = Tag(0x420122);
